"""Answer every TCP client on ADDRESS with one line until stopped: `tcp_serve.py ADDRESS MESSAGE`.

Prints `ready PORT` once listening. Each reply names the client's address, so a test sees which host came.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    """Serve until SIGTERM."""
    address, message = sys.argv[1:]
    with socket.create_server((address, 0)) as server:
        print(f"ready {server.getsockname()[1]}", flush=True)
        while True:
            conn, (peer, _) = server.accept()
            with conn:
                conn.sendall(f"{message} to {peer}\n".encode())


if __name__ == "__main__":
    main()
