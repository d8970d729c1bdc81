"""The `inferhub` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .core import ConfigError, Settings, load_settings, serve

_log = logging.getLogger("inferhub_desktop")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferhub", description="Share this workstation's GPU with a LAN pool that speaks Ollama's API."
    )
    parser.add_argument("--version", action="version", version=f"inferhub {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("serve", help="run a node", description="Run a node until interrupted.")
    run.add_argument("--headless", action="store_true", help="run without any GUI (the only mode for now)")
    run.add_argument("--api-port", type=int, metavar="PORT", help="port of the local API (default 11435)")
    run.add_argument(
        "--backend",
        metavar="URL",
        help="Ollama to relay to (default: OLLAMA_HOST, else http://127.0.0.1:11434)",
    )
    run.add_argument("--name", help="display name of this node (default: the host name)")
    run.add_argument(
        "--config-dir",
        type=Path,
        metavar="DIR",
        help="settings directory (default: INFERHUB_CONFIG_DIR, else the platform's config directory)",
    )
    run.add_argument(
        "--max-body-mib", type=int, metavar="MIB", help="largest request body accepted (default 100)"
    )
    run.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(
            args.config_dir,
            {
                "api_port": args.api_port,
                "backend": args.backend,
                "name": args.name,
                "max_body_mib": args.max_body_mib,
            },
        )
    except ConfigError as exc:
        parser.exit(2, f"inferhub: error: {exc}\n")
    return _run(settings)


def _run(settings: Settings) -> int:
    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:  # Windows' event loops have no signal handlers
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        _log.error(
            "cannot listen on 127.0.0.1:%d: %s. Is another InferHub running? Choose a port with --api-port",
            settings.api_port,
            exc.strerror or exc,
        )
        return 1
    return 0
