"""Print what a TCP server sends: `tcp_fetch.py ADDRESS PORT TIMEOUT_S`; exit 1 if it cannot be reached."""

from __future__ import annotations

import socket
import sys


def main() -> int:
    """Connect, read to the end, and print it."""
    address, port, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as conn:
            data = b"".join(iter(lambda: conn.recv(4096), b""))
    except OSError as error:
        print(f"unreachable: {error!r}", file=sys.stderr)
        return 1
    print(data.decode(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
