"""Follow a node's status stream many times, each time naming another port of this host as the follower's
share API, as a host making a node connect where it says would; count how often the node comes.

python tests/lan/scripts/name_ports.py HOST PORT COUNT SECONDS

Listens on COUNT ports that accept and hang up, as no node would; names each once; then prints how
many it named and the most times the node connected to any one of them within SECONDS.
"""

from __future__ import annotations

import select
import socket
import sys
import time


def main() -> None:
    host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    listeners = []
    for _ in range(count):
        listener = socket.create_server(("0.0.0.0", 0))
        listener.setblocking(False)
        listeners.append(listener)
    knocks = dict.fromkeys(listeners, 0)
    streams = []
    for listener in listeners:
        named = listener.getsockname()[1]
        stream = socket.create_connection((host, port), timeout=2)
        stream.sendall(
            f"GET /_inferhub/v1/status HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Accept: application/x-ndjson\r\nX-InferHub-Share-Port: {named}\r\n\r\n".encode()
        )
        streams.append(stream)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(listeners, [], [], left)
        for listener in ready:
            connection, _ = listener.accept()
            connection.close()  # accept and hang up, as no node would
            knocks[listener] += 1
    print(count, max(knocks.values()), flush=True)
    for s in [*streams, *listeners]:
        s.close()


if __name__ == "__main__":
    main()
