"""Pretend to be a member of a private pool, knowing only what the LAN shows of it.

python tests/lan/scripts/spoof_member.py ADDRESS NODE_ID POOL_ID NAME [--tls FP] [--relay HOST:PORT]
    [--watch TEXT] [--pad-mib N]

Advertises on ADDRESS an `_inferhub._tcp` record with the pool's public id and a member's node id, name
and certificate fingerprint, sharing, with a free GPU. Without --relay it serves a share API there that
answers every request (over plain HTTP: it has no certificate of the pool), its status padded with
--pad-mib MiB, and prints `asked METHOD PATH` for each request it gets. With --relay it relays every
connection to the real member at HOST:PORT, as a host in the middle would, keeping what passes; on
SIGTERM it prints one JSON line: the bytes relayed, the first byte a client sent, and whether the text
given by --watch passed in the clear. Prints `spoofing` once announced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket

from aiohttp import web
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from inferhub_desktop.core.peers import SERVICE_TYPE, PeerAnnouncement, encode_txt

# Beside the real node on this host, whose share API has 11436.
PORT = 11437


def status_of(node_id: str, name: str) -> dict[str, object]:
    """A status a node reads as well-formed: only the pool's certificate could let the spoof in."""
    return {
        "id": node_id,
        "name": name,
        "share": True,
        "load": {"active": 0, "slots": 8},
        "models_hash": "0" * 12,
        "telemetry": None,
        "backend": {
            "kind": "ollama",
            "url": "http://127.0.0.1:11434",
            "reachable": True,
            "installed": [{"name": "llama3:latest", "size": 4 << 30}],
            "loaded": [],
        },
    }


class Relay:
    def __init__(self, target: tuple[str, int], watch: bytes) -> None:
        self.target = target
        self.watch = watch
        self.seen = bytearray()
        self.first = b""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, client: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if client and not self.first:
                        self.first = data[:1]
                    self.seen.extend(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def summary(self) -> str:
        return json.dumps(
            {"bytes": len(self.seen), "first": self.first.hex(), "watched_seen": self.watch in self.seen}
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("address", "node_id", "pool_id", "name"):
        parser.add_argument(name)
    parser.add_argument("--tls", default="")
    parser.add_argument("--relay", default="")
    parser.add_argument("--watch", default="")
    parser.add_argument("--pad-mib", type=int, default=0)
    args = parser.parse_args()
    relay: Relay | None = None
    if args.relay:
        host, port = args.relay.rsplit(":", 1)
        relay = Relay((host, int(port)), args.watch.encode())
        server = await asyncio.start_server(relay.serve, args.address, PORT)
    else:

        async def answer(request: web.Request) -> web.Response:
            print(f"asked {request.method} {request.path}", flush=True)
            if request.path.endswith("/status"):
                status = status_of(args.node_id, args.name)
                return web.json_response({**status, "padding": "x" * (args.pad_mib << 20)})
            return web.json_response({"response": "spoofed"})

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, args.address, PORT).start()
    announcement = PeerAnnouncement(
        args.node_id,
        args.name,
        args.address,
        PORT,
        True,
        "1x RTX 4090",
        24000,
        24564,
        0,
        8,
        "0" * 12,
        pool=args.pool_id,
        tls=args.tls,
    )
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{args.name}-spoof.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(args.address)],
        port=PORT,
        properties=encode_txt(announcement),
    )
    zc = AsyncZeroconf(interfaces=[args.address])
    await zc.async_register_service(info)
    print("spoofing", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await zc.async_unregister_service(info)
    await zc.async_close()
    if relay is not None:
        server.close()
        print(relay.summary(), flush=True)
    else:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
