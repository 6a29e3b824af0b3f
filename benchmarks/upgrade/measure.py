#!/usr/bin/env python3
"""The demo's zero-downtime upgrade (SIGHUP) against a plain stop-and-start, as whole processes.

Runs one demo (both ports chosen free on 127.0.0.1), then ROUNDS rounds of each variant,
interleaved (an upgrade, then a restart, ...), after WARMUP uncounted rounds of each:

  upgrade   t0  SIGHUP sent to the serving process
            t1  the API's `/pid` (a fresh connection, asked every 1 ms) answers another pid
                                                        -> SIGHUP to new serving = t1 - t0
            t2  the old process is reaped (this script is the subreaper of the demo's
                descendants: Linux), exit code 0        -> SIGHUP to old gone    = t2 - t0
  restart   t0  SIGTERM sent to the serving process
            t1  it is reaped, exit code 0               -> SIGTERM to exit       = t1 - t0
            t2  a new demo (spawned at t1, same flags and ports) answers `/readyz` 200
                (asked every 1 ms)                      -> SIGTERM to ready      = t2 - t0

Meanwhile a prober connects to the API's port every 1 ms (and closes at once), from t0 to the
end of the round, and counts the connections refused. It prints each measure's median and p90,
and the ratios of the restart's medians to the upgrade's.

Build the demo first (BENCHMARKS.md):

  cargo build --release --example demo
  python3 benchmarks/upgrade/measure.py [--rounds 10] [--warmup 1]
"""

import argparse
import ctypes
import os
import signal
import socket
import statistics
import subprocess
import threading
import time

WATCHDOG_S = 30.0
PR_SET_CHILD_SUBREAPER = 36
RESEND_S = 0.5


def target_dir():
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.environ["CARGO_TARGET_DIR"]
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    """GET path on a fresh connection: (status, body), or None if it could not be asked."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            raw = b""
            while chunk := s.recv(4096):
                raw += chunk
    except OSError:
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ")[1]), body.decode().strip()
    except (IndexError, ValueError):
        return None


def until(what, cond):
    """Asks cond() every 1 ms until it returns something truthy; returns (it, the time)."""
    deadline = time.monotonic() + WATCHDOG_S
    while True:
        got = cond()
        if got:
            return got, time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"watchdog: {what}")
        time.sleep(0.001)


class Prober:
    """Connects to the port every 1 ms while on, counting refusals."""

    def __init__(self, port):
        self.port, self.on, self.refused, self.tried = port, threading.Event(), 0, 0
        self.stopped = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stopped.is_set():
            self.on.wait(0.05)
            if self.on.is_set():
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
                except ConnectionRefusedError:
                    self.refused += 1
                except OSError:
                    pass
                self.tried += 1
                time.sleep(0.001)

    def window(self):
        """Starts counting afresh."""
        self.refused = self.tried = 0
        self.on.set()

    def close(self):
        """Stops counting; returns the refusals of the window."""
        self.on.clear()
        return self.refused


def reap(pid):
    """Waits for pid (a child or an adopted orphan); returns its exit code and the time."""
    result = {}

    def wait():
        result["status"] = os.waitpid(pid, 0)[1]
        result["at"] = time.monotonic()

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    t.join(WATCHDOG_S)
    if t.is_alive():
        raise SystemExit(f"watchdog: process {pid} did not exit")
    return os.waitstatus_to_exitcode(result["status"]), result["at"]


def spawn(demo, api, health):
    args = [demo, "--api-addr", f"127.0.0.1:{api}", "--health-addr", f"127.0.0.1:{health}"]
    child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    until("the demo is ready", lambda: (get(health, "/readyz") or (0,))[0] == 200)
    return child.pid


def upgrade(pid, api, prober):
    """One upgrade. A SIGHUP that lands a moment before the run phase opens upgrades (right
    after the restart's `/readyz` 200) is refused by the demo: sent again after RESEND_S, and
    counted (the figures of such a round include the wait)."""
    prober.window()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGHUP)
    resends, sent = 0, t0
    deadline = t0 + WATCHDOG_S
    while True:
        r = get(api, "/pid")
        if r and r[0] == 200 and int(r[1]) != pid:
            new, t1 = int(r[1]), time.monotonic()
            break
        if time.monotonic() > deadline:
            raise SystemExit("watchdog: no new process serves")
        if time.monotonic() - sent > RESEND_S:
            os.kill(pid, signal.SIGHUP)
            resends, sent = resends + 1, time.monotonic()
        time.sleep(0.001)
    code, t2 = reap(pid)
    assert code == 0, f"the old process exited {code}"
    return new, {"SIGHUP to new serving": t1 - t0, "SIGHUP to old gone": t2 - t0,
                 "upgrade refused": prober.close(), "SIGHUP sent again": resends}


def restart(pid, demo, api, health, prober):
    prober.window()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    code, t1 = reap(pid)
    assert code == 0, f"the demo exited {code}"
    new = spawn(demo, api, health)
    t2 = time.monotonic()
    return new, {"SIGTERM to exit": t1 - t0, "SIGTERM to ready": t2 - t0,
                 "restart refused": prober.close()}


def summary(values):
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return statistics.median(ordered), p90


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    opts = parser.parse_args()
    demo = os.path.join(target_dir(), "release", "examples", "demo")
    if not os.path.exists(demo):
        raise SystemExit(f"{demo} is missing: cargo build --release --example demo")
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed: Linux only")
    api, health = free_port(), free_port()
    prober = Prober(api)
    pid = spawn(demo, api, health)
    results = {}
    try:
        for round_ in range(opts.warmup + opts.rounds):
            pid, up = upgrade(pid, api, prober)
            pid, re = restart(pid, demo, api, health, prober)
            if round_ >= opts.warmup:
                for name, value in {**up, **re}.items():
                    results.setdefault(name, []).append(value)
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
            reap(pid)
        except (ProcessLookupError, ChildProcessError):
            pass
        prober.stopped.set()
    print(f"{opts.rounds} rounds (after {opts.warmup} warm-up), release demo:")
    medians = {}
    for name, values in results.items():
        median, p90 = summary(values)
        medians[name] = median
        if name.endswith("refused") or name.endswith("again"):
            print(f"  {name:24} median {median:8.1f}     p90 {p90:8.1f}     "
                  f"total {sum(values)}")
        else:
            print(f"  {name:24} median {median * 1e3:8.1f} ms  p90 {p90 * 1e3:8.1f} ms")
    for restart_m, upgrade_m in [("SIGTERM to ready", "SIGHUP to new serving"),
                                 ("SIGTERM to exit", "SIGHUP to old gone")]:
        print(f"  {restart_m} / {upgrade_m}: {medians[restart_m] / medians[upgrade_m]:.2f}")


if __name__ == "__main__":
    main()
