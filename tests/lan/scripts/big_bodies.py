"""Send large bodies to a share API at once, as an outsider filling a node's memory would.

python tests/lan/scripts/big_bodies.py HOST PORT COUNT MIB [--tls]

Opens COUNT connections and on each sends a POST /api/generate declaring a body of MIB MiB, then writes
the body as fast as the node takes it. Prints one JSON line: for each connection the status the node
answered (0 for none) and the MiB it took before it answered or closed.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

CHUNK = b"\0" * (1 << 20)


async def send(host: str, port: int, mib: int, context: ssl.SSLContext | None) -> tuple[int, int]:
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except (OSError, ssl.SSLError):
        return 0, 0
    head = f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Length: {mib << 20}\r\n\r\n"
    writer.write(head.encode())
    sent = 0
    answer = asyncio.ensure_future(reader.readline())
    try:
        while sent < mib and not answer.done():
            writer.write(CHUNK)
            await writer.drain()
            sent += 1
        line = await asyncio.wait_for(answer, 30)
    except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
        line = answer.result() if answer.done() and not answer.exception() else b""
    writer.close()
    status = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0
    return status, sent


async def main() -> None:
    host, port, count, mib, *flags = sys.argv[1:]
    context = None
    if "--tls" in flags:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    results = await asyncio.gather(*(send(host, int(port), int(mib), context) for _ in range(int(count))))
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
