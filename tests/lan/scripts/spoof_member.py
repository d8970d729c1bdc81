"""Pretend to be a member of a private pool, knowing only what the LAN shows of it.

python tests/lan/scripts/spoof_member.py ADDRESS NODE_ID POOL_ID NAME

Advertises on ADDRESS an `_inferhub._tcp` record with the pool's public id and a member's node id and
name, sharing, with a free GPU, and serves a share API there that answers every request, the status
unsigned. Prints `spoofing` once announced and `asked METHOD PATH` for each request it gets; stops on
SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

from aiohttp import web
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from inferhub_desktop.core.peers import SERVICE_TYPE, PeerAnnouncement, encode_txt

# Beside the real node on this host, whose share API has 11436.
PORT = 11437


async def main() -> None:
    address, node_id, pool_id, name = sys.argv[1:]

    async def answer(request: web.Request) -> web.Response:
        print(f"asked {request.method} {request.path}", flush=True)
        # A status a node reads as well-formed: only its missing signature can keep the spoof out.
        status = {
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
        return web.json_response(status if request.path.endswith("/status") else {"response": "spoofed"})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, address, PORT).start()
    announcement = PeerAnnouncement(
        node_id, name, address, PORT, True, "1x RTX 4090", 24000, 24564, 0, 8, "0" * 12, pool=pool_id
    )
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{name}-spoof.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(address)],
        port=PORT,
        properties=encode_txt(announcement),
    )
    zc = AsyncZeroconf(interfaces=[address])
    await zc.async_register_service(info)
    print("spoofing", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await zc.async_unregister_service(info)
    await zc.async_close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
