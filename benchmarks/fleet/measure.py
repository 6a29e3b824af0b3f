#!/usr/bin/env python3
"""Whole-process start-to-ready and SIGTERM-to-exit of `examples/fleet.rs` against raw threads.

For each N, runs every variant RUNS times, interleaved (one run of each variant in turn, the
order rotated every round, after WARMUP uncounted rounds), each run:

  t0  just before the child is spawned (stdout piped, stderr to /dev/null, RUST_LOG unset)
  t1  its `ready` line has been read              -> start to ready = t1 - t0
  t2  just before SIGTERM is sent (right after t1)
  t3  os.waitpid has reaped it, exit code 0       -> SIGTERM to exit = t3 - t2

and prints, per N, each variant's medians and its ratio to the parallel raw threads' (the
ceiling), as the ratio of the medians and as the median of the per-round ratios.

Build the two binaries first (BENCHMARKS.md, "Whole process: N services"):

  cargo build --release -p lifecycle --example fleet
  cargo build --release -p lifecycle-benchmarks --bin raw_threads
  python3 benchmarks/fleet/measure.py [--runs 20] [--warmup 2] [--n 10,100,1000]
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


def variants(release):
    fleet = os.path.join(release, "examples", "fleet")
    raw = os.path.join(release, "raw_threads")
    return [
        ("lifecycle", lambda n: [fleet, "--services", str(n)]),
        ("raw parallel", lambda n: [raw, "--services", str(n)]),
        ("raw sequential", lambda n: [raw, "--services", str(n), "--mode", "sequential"]),
        ("raw seq + helper", lambda n: [raw, "--services", str(n), "--mode", "helper"]),
    ]


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--n", default="10,100,1000")
    args = parser.parse_args()
    kinds = variants(os.path.join(target_dir(), "release"))
    print(f"# {args.runs} runs of each variant per N, after {args.warmup} warm-up rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| N | variant | start to ready (median) | ratio to raw parallel: of medians, "
          "median of rounds | SIGTERM to exit (median) | ratio to raw parallel: of medians, "
          "median of rounds |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in (int(x) for x in args.n.split(",")):
        samples = {name: [] for name, _ in kinds}
        for round_ in range(args.warmup + args.runs):
            shift = round_ % len(kinds)
            for name, argv in kinds[shift:] + kinds[:shift]:
                sample = one_run(argv(n))
                if round_ >= args.warmup:
                    samples[name].append(sample)
        base = samples["raw parallel"]
        for name, _ in kinds:
            cells = [str(n), name]
            for phase in (0, 1):
                mine = [s[phase] for s in samples[name]]
                theirs = [s[phase] for s in base]
                of_medians = statistics.median(mine) / statistics.median(theirs)
                of_rounds = statistics.median(a / b for a, b in zip(mine, theirs))
                cells += [ms(statistics.median(mine)), f"{of_medians:.2f}, {of_rounds:.2f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
