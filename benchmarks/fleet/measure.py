#!/usr/bin/env python3
"""Whole-process start-to-ready and SIGTERM-to-exit of `examples/fleet.rs` against raw threads.

For each N, runs every variant RUNS times, interleaved (one run of each variant in turn, the
order rotated every round, after WARMUP uncounted rounds), each run:

  t0  just before the child is spawned (stdout piped, stderr to /dev/null, RUST_LOG unset)
  t1  its `ready` line has been read              -> start to ready = t1 - t0
  t2  just before SIGTERM is sent (right after t1)
  t3  os.waitpid has reaped it, exit code 0       -> SIGTERM to exit = t3 - t2

and prints, per N, each variant's medians and its ratio to the ceiling's, as the ratio of the
medians and as the median of the per-round ratios.

The variants, N independent services (the default; the ceiling is raw parallel):

  lifecycle                fleet --services N
  raw parallel             raw_threads --services N
  raw sequential           raw_threads --services N --mode sequential
  raw seq + helper         raw_threads --services N --mode helper
  raw on call threads      raw_threads --services N --mode calls
  tokio-graceful-shutdown  tgs_fleet --services N

With --chain, N services in one chain, each needing the one before it: started one after
another, closed in reverse (the ceiling is raw sequential, which does exactly that by hand);
each median is also given per service (median / N):

  lifecycle                fleet --services N --chain
  raw sequential           raw_threads --services N --mode sequential
  raw seq on call threads  raw_threads --services N --mode calls-sequential
  tokio-graceful-shutdown  tgs_fleet --services N --chain   (nested subsystems)

Build the three binaries first (BENCHMARKS.md, "Whole process: N services"):

  cargo build --release -p lifecycle --example fleet
  cargo build --release -p lifecycle-benchmarks --bin raw_threads
  cargo build --release -p lifecycle-benchmarks --example tgs_fleet
  python3 benchmarks/fleet/measure.py [--chain] [--runs 20] [--warmup 2] [--n 10,100,1000]

A variant whose binary is missing is skipped, with the command that builds it.
"""

import argparse
import os
import signal
import statistics
import subprocess
import threading
import time

WATCHDOG_S = 30.0


def target_dir():
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.environ["CARGO_TARGET_DIR"]
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target")


BUILD = {
    "fleet": "cargo build --release -p lifecycle --example fleet",
    "raw_threads": "cargo build --release -p lifecycle-benchmarks --bin raw_threads",
    "tgs_fleet": "cargo build --release -p lifecycle-benchmarks --example tgs_fleet",
}


def variants(release, chain):
    """The variants as (name, binary, argv of N), and the name of the ceiling among them."""
    fleet = os.path.join(release, "examples", "fleet")
    raw = os.path.join(release, "raw_threads")
    tgs = os.path.join(release, "examples", "tgs_fleet")
    if chain:
        return [
            ("lifecycle", fleet, lambda n: [fleet, "--services", str(n), "--chain"]),
            ("raw sequential", raw,
             lambda n: [raw, "--services", str(n), "--mode", "sequential"]),
            ("raw seq on call threads", raw,
             lambda n: [raw, "--services", str(n), "--mode", "calls-sequential"]),
            ("tokio-graceful-shutdown", tgs, lambda n: [tgs, "--services", str(n), "--chain"]),
        ], "raw sequential"
    return [
        ("lifecycle", fleet, lambda n: [fleet, "--services", str(n)]),
        ("raw parallel", raw, lambda n: [raw, "--services", str(n)]),
        ("raw sequential", raw, lambda n: [raw, "--services", str(n), "--mode", "sequential"]),
        ("raw seq + helper", raw, lambda n: [raw, "--services", str(n), "--mode", "helper"]),
        ("raw on call threads", raw, lambda n: [raw, "--services", str(n), "--mode", "calls"]),
        ("tokio-graceful-shutdown", tgs, lambda n: [tgs, "--services", str(n)]),
    ], "raw parallel"


def available(kinds, base):
    """The variants whose binary exists; says which command builds each missing one."""
    present = []
    for name, binary, argv in kinds:
        if os.path.isfile(binary) and os.access(binary, os.X_OK):
            present.append((name, argv))
            continue
        build = BUILD[os.path.basename(binary)]
        if name == base:
            raise SystemExit(f"{binary} is missing (the ceiling, {name}): build it with `{build}`")
        print(f"# skipping {name}: {binary} is missing; build it with `{build}`", flush=True)
    return present


def one_run(argv):
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env)
    watchdog = threading.Timer(WATCHDOG_S, child.kill)
    watchdog.start()
    try:
        line = child.stdout.readline()
        t1 = time.perf_counter()
        if b"ready" not in line:
            raise SystemExit(f"{argv}: no ready line, got {line!r}")
        t2 = time.perf_counter()
        os.kill(child.pid, signal.SIGTERM)
        _, status = os.waitpid(child.pid, 0)
        t3 = time.perf_counter()
        child.returncode = os.waitstatus_to_exitcode(status)
    finally:
        watchdog.cancel()
        child.stdout.close()
    if child.returncode != 0:
        raise SystemExit(f"{argv}: exit code {child.returncode}")
    return t1 - t0, t3 - t2


def ms(seconds):
    return f"{seconds * 1e3:.2f} ms"


def us(seconds):
    return f"{seconds * 1e6:.1f} µs"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--n", default="10,100,1000")
    parser.add_argument("--chain", action="store_true",
                        help="the services as one chain (started one after another, closed in "
                             "reverse); the ceiling is then raw sequential")
    args = parser.parse_args()
    kinds, base = variants(os.path.join(target_dir(), "release"), args.chain)
    kinds = available(kinds, base)
    shape = "one chain of N services" if args.chain else "N independent services"
    print(f"# {shape}; {args.runs} runs of each variant per N, after {args.warmup} warm-up "
          f"rounds; load average {os.getloadavg()[0]:.2f}")
    ratio = f"ratio to {base}: of medians, median of rounds"
    per_service = " per service (median / N) |" if args.chain else ""
    print(f"| N | variant | start to ready (median) |{per_service} {ratio} "
          f"| SIGTERM to exit (median) |{per_service} {ratio} |")
    print("|---:|---|" + ("---:|---:|---:|" if args.chain else "---:|---:|") * 2)
    for n in (int(x) for x in args.n.split(",")):
        samples = {name: [] for name, _ in kinds}
        for round_ in range(args.warmup + args.runs):
            shift = round_ % len(kinds)
            for name, argv in kinds[shift:] + kinds[:shift]:
                sample = one_run(argv(n))
                if round_ >= args.warmup:
                    samples[name].append(sample)
        theirs_all = samples[base]
        for name, _ in kinds:
            cells = [str(n), name]
            for phase in (0, 1):
                mine = [s[phase] for s in samples[name]]
                theirs = [s[phase] for s in theirs_all]
                median = statistics.median(mine)
                of_medians = median / statistics.median(theirs)
                of_rounds = statistics.median(a / b for a, b in zip(mine, theirs))
                cells.append(ms(median))
                if args.chain:
                    cells.append(us(median / n))
                cells.append(f"{of_medians:.2f}, {of_rounds:.2f}")
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
