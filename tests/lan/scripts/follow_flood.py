"""Follow a node's status stream again and again at a steady rate, holding every stream, as a host
making a node write to as many followers as it can would.

python tests/lan/scripts/follow_flood.py HOST PORT PER_SECOND SECONDS

Opens PER_SECOND connections a second for SECONDS seconds, each asking for the status as a stream
(`Accept: application/x-ndjson`) and reading nothing, then prints how many it opened and how many the
node still streams to: connections it answered with 200 and has not closed.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time

_REQUEST = "GET /_inferhub/v1/status HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/x-ndjson\r\n\r\n"


def still_streaming(sock: socket.socket) -> bool:
    """Tell whether the node answered this connection with a stream and still holds it."""
    sock.setblocking(False)
    received = b""
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return received.startswith(b"HTTP/1.1 200")
        except OSError:
            return False
        if not data:
            return False  # closed by the node
        received += data


def main() -> None:
    host, port, per_second, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    request = _REQUEST.format(host=host, port=port).encode()
    held: list[socket.socket] = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        if len(held) < elapsed * per_second:
            with contextlib.suppress(OSError):
                sock = socket.create_connection((host, port), timeout=2)
                sock.sendall(request)
                held.append(sock)
        time.sleep(0.005)
    time.sleep(0.5)  # the last ones' answers
    print(len(held), sum(still_streaming(s) for s in held), flush=True)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
