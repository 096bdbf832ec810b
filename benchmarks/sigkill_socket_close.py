"""How long after a SIGKILL the kernel closes the dead process's sockets (what a client waiting on
a connection to it can notice), for a plain Python process, one that imported torch and ran a
convolution, and one holding 700 MiB of touched memory.  The socket closes only after the kernel has
freed the process's memory, so a bigger process is noticed later; this is why the gateway hedges
(docs/design-notes.md, "Failover by hedging").

    python benchmarks/sigkill_socket_close.py --repeats 5

Each trial: start the child, connect to its listening socket, SIGKILL it, time until recv() returns.
Only 127.0.0.1; every child is killed and reaped.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

CHILD = r"""
import socket, sys, time
if sys.argv[1] == "torch":
    import torch
    torch.set_num_threads(1)
    torch.nn.Conv2d(3, 8, 3)(torch.zeros(1, 3, 32, 32))
if sys.argv[1] == "700MiB":
    b = bytearray(700 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
time.sleep(3600)
"""


def trial(kind: str) -> tuple[float, int]:
    p = subprocess.Popen([sys.executable, "-c", CHILD, kind], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            time.sleep(0.3)
            with open(f"/proc/{p.pid}/status") as fh:
                rss_mib = int(fh.read().split("VmRSS:")[1].split()[0]) // 1024
            t0 = time.monotonic()
            os.kill(p.pid, signal.SIGKILL)
            c.recv(1)
            return (time.monotonic() - t0) * 1e3, rss_mib
    finally:
        p.kill()
        p.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}")
    print("process    resident MiB   SIGKILL -> socket closed (ms): median, min-max over trials")
    for kind in ("plain", "torch", "700MiB"):
        got = [trial(kind) for _ in range(args.repeats)]
        ms = [m for m, _ in got]
        print(
            f"{kind:9}  {got[0][1]:12d}   {statistics.median(ms):6.1f}, {min(ms):.1f}-{max(ms):.1f}"
            f"  ({', '.join(f'{m:.1f}' for m in ms)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
