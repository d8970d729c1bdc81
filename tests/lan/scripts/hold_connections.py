"""Open connections to a server at a steady rate and hold them, as a host exhausting descriptors would.

python tests/lan/scripts/hold_connections.py HOST PORT PER_SECOND SECONDS

Opens PER_SECOND connections a second for SECONDS seconds, sending nothing, then prints how many it
opened and how many the server still holds open.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import time


def main() -> None:
    host, port, per_second, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    held: list[socket.socket] = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        if len(held) < elapsed * per_second:
            with contextlib.suppress(OSError):
                held.append(socket.create_connection((host, port), timeout=2))
        time.sleep(0.005)
    # A connection the server closed reads as at its end; one it holds has nothing to read.
    readable, _, _ = select.select(held, [], [], 0.5)
    closed = sum(1 for s in readable if not s.recv(1, socket.MSG_PEEK))
    print(len(held), len(held) - closed, flush=True)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
