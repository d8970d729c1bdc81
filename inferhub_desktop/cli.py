"""The `inferhub` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .core import (
    DEFAULT_API_PORT,
    STATUS_PATH,
    ConfigError,
    Settings,
    default_config_dir,
    load_settings,
    read_settings_file,
    serve,
)

_log = logging.getLogger("inferhub_desktop")
_STATUS_TIMEOUT_S = 5.0


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
    status = commands.add_parser(
        "status", help="show this machine's node", description="Show the state of this machine's node."
    )
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument("--api-port", type=int, metavar="PORT", help="the node's local API port")
    status.add_argument("--config-dir", type=Path, metavar="DIR", help="settings directory of the node")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "status":
        return _status(args)
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


def _status(args: argparse.Namespace) -> int:
    try:
        port = args.api_port or read_settings_file(args.config_dir or default_config_dir()).get(
            "api_port", DEFAULT_API_PORT
        )
    except ConfigError as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{port}{STATUS_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=_STATUS_TIMEOUT_S) as reply:
            status = json.load(reply)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"inferhub: no InferHub node answers on 127.0.0.1:{port} ({reason}); "
            "start one with `inferhub serve --headless`",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    """Render a node's status for people."""
    backend = status["backend"]
    lines = [f"{status['name']}  InferHub {status['version']}  {status['api_url']}  (id {status['id'][:8]})"]
    if backend["reachable"]:
        lines.append(f"backend  {backend['kind']} {backend['version']} at {backend['url']}: up")
    else:
        lines.append(f"backend  {backend['kind']} at {backend['url']}: DOWN, {backend['error']}")
    if telemetry := status.get("telemetry"):
        lines += _format_telemetry(telemetry)
    loaded = {m["name"]: m for m in backend["loaded"]}
    rows = []
    for model in sorted(backend["installed"], key=lambda m: m["name"]):
        where = ""
        if running := loaded.get(model["name"]):
            where = f"loaded, {_gib(running['size_vram'])} in VRAM"
        rows.append(
            (model["name"], model["parameter_size"], model["quantization_level"], _gib(model["size"]), where)
        )
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(5)]
    for n, row in enumerate(rows):
        cells = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append(f"{'models' if n == 0 else '':<9}{cells}".rstrip())
    if not rows and backend["reachable"]:
        lines.append("models   none installed: `ollama pull llama3.2` fetches one")
    return "\n".join(lines)


def _format_telemetry(telemetry: dict[str, Any]) -> list[str]:
    lines = []
    for n, gpu in enumerate(telemetry["gpus"]):
        extras = "".join(
            text
            for value, text in [
                (gpu["utilization_pct"], f", {gpu['utilization_pct']}% busy"),
                (gpu["temperature_c"], f", {gpu['temperature_c']}°C"),
            ]
            if value is not None
        )
        memory = f"{gpu['used_mib']} of {gpu['total_mib']} MiB used"
        lines.append(f"{'gpus' if n == 0 else '':<9}{gpu['index']}: {gpu['name']}, {memory}{extras}")
    system = telemetry["system"]
    if not telemetry["gpus"]:
        lines.append(
            "gpus     none: models run from system memory" if system["unified_memory"] else "gpus     unknown"
        )
    if telemetry["nvml_error"]:
        lines.append(f"         NVML: {telemetry['nvml_error']}")
    lines.append(
        f"system   CPU {system['cpu_pct']:.0f}% of {system['cpu_count']} cores, "
        f"RAM {system['ram_free_mib'] / 1024:.1f} of {system['ram_total_mib'] / 1024:.1f} GiB free"
    )
    return lines


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


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
