"""The `inferhub` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .core import (
    ADDRESSES_PATH,
    AUDIT_PATH,
    CONTROL_HEADER,
    DEFAULT_API_PORT,
    FROM_HEADER,
    LEND_CHOICES,
    PEERS_PATH,
    POOL_PATH,
    ROUTE_PATH,
    STATUS_PATH,
    SWITCHES,
    SWITCHES_PATH,
    TOKEN_FILE,
    USAGE_PATH,
    USER_FIELDS,
    AddressState,
    ConfigError,
    MalformedRecord,
    NodeStatus,
    PeerState,
    PeerUsage,
    PortTaken,
    PrivatePool,
    SettingsNotSaved,
    SettingsStore,
    Telemetry,
    Unauthorized,
    audit_row,
    create_pool,
    default_config_dir,
    join_pool,
    leave_pool,
    load_identity,
    load_settings,
    parse_peer,
    pool_info,
    read_audit,
    read_control_token,
    read_settings_file,
    serve,
)

_log = logging.getLogger("inferhub_desktop")
_CLIENT_TIMEOUT_S = 5.0
# Taking up a new pool restarts the share API, which lets its requests in flight finish first.
_POOL_TIMEOUT_S = 15.0
# The switch commands: what each turns on or off, and how it is said.
_SWITCH_COMMANDS = {
    "share": ("share", "share this GPU with the pool, or stop", "sharing"),
    "local-only": ("local_only", "use only this machine, or the whole pool", "local only"),
    "pool-pull": ("pool_pull", "let the pool pull models onto this machine, or not", "pool pull"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferhub",
        description="Share this workstation's GPU with a LAN pool that speaks Ollama's API. "
        "Without a command, start the tray app.",
    )
    parser.add_argument("--version", action="version", version=f"inferhub {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "serve",
        help="run a node",
        description="Run a node until interrupted: in the tray app, or alone with --headless.",
    )
    run.add_argument("--headless", action="store_true", help="run without the tray and dashboard")
    run.add_argument("--api-port", type=int, metavar="PORT", help="port of the local API (default 11435)")
    run.add_argument(
        "--backend",
        metavar="URL",
        help="the model server to relay to: an Ollama URL, or openai:URL for an OpenAI-compatible one "
        "(llama.cpp, LM Studio, vLLM); default: OLLAMA_HOST, else the first that answers of Ollama on "
        "11434, LM Studio on 1234, llama.cpp on 8080, vLLM on 8000",
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
        "--share",
        action=argparse.BooleanOptionalAction,
        help="share this GPU with the pool (remembered; off until turned on)",
    )
    run.add_argument("--share-port", type=int, metavar="PORT", help="port of the share API (default 11436)")
    run.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        help="serve the share API over TLS with this node's own certificate, which peers pin",
    )
    run.add_argument(
        "--max-remote",
        type=int,
        metavar="N",
        help="peers' requests run at once (default: OLLAMA_NUM_PARALLEL)",
    )
    run.add_argument(
        "--interface",
        action="append",
        dest="interfaces",
        metavar="IP",
        help="LAN address to share and discover on (repeatable; default: all)",
    )
    run.add_argument(
        "--peer",
        action="append",
        dest="peers",
        metavar="HOST:PORT",
        help="a peer to reach without multicast, e.g. over a VPN (repeatable)",
    )
    run.add_argument(
        "--local-only",
        action=argparse.BooleanOptionalAction,
        help="send this machine's requests to its own backend only (remembered)",
    )
    run.add_argument(
        "--pool-pull",
        action=argparse.BooleanOptionalAction,
        help="let peers pull models onto this machine (remembered; off until turned on)",
    )
    owner = run.add_argument_group(
        "the owner first", "when this machine stops sharing for its owner (remembered)"
    )
    owner.add_argument(
        "--pause-on-gpu-use",
        action=argparse.BooleanOptionalAction,
        help="pause sharing while another program uses the GPU (default: on)",
    )
    owner.add_argument(
        "--pause-gpu-mib",
        type=int,
        metavar="MIB",
        help="GPU memory a program must hold to pause sharing (default 1024: a desktop's own use does not)",
    )
    owner.add_argument(
        "--pause-gpu-percent",
        type=int,
        metavar="PCT",
        help="GPU load, while the model server is idle, that pauses sharing (default 50; 0: never)",
    )
    owner.add_argument(
        "--resume-after",
        type=int,
        dest="resume_after_s",
        metavar="SECONDS",
        help="share again this long after the other GPU work ends (default 60)",
    )
    owner.add_argument(
        "--reserve-vram-gib",
        type=int,
        metavar="GIB",
        help="VRAM kept free for you: peers' requests that would load a model into it go elsewhere",
    )
    owner.add_argument(
        "--share-when-away",
        type=int,
        dest="share_when_away_min",
        metavar="MINUTES",
        help="share only once you have been away this long, or the screen is locked (default 0: always)",
    )
    owner.add_argument(
        "--quiet-hours",
        action="append",
        metavar="WINDOW",
        help='a weekly window when this machine does not share, e.g. "mon-fri 09:00-17:30" (repeatable)',
    )
    owner.add_argument(
        "--grace",
        type=int,
        dest="grace_s",
        metavar="SECONDS",
        help="when sharing pauses, peers' requests under way may finish for this long (default 30)",
    )
    lending = run.add_argument_group("lending models (peers copying this machine's models)")
    lending.add_argument(
        "--lend-models",
        choices=LEND_CHOICES,
        help="who may copy this machine's models: no one, the private pool's members (default), or the LAN",
    )
    lending.add_argument(
        "--lend-mib-s",
        type=int,
        metavar="MIB",
        help="send models at most this many MiB a second, all copies together (default 0: no limit)",
    )
    run.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: info"
    )

    # Commands that talk to the running node through its local API.
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--api-port", type=int, metavar="PORT", help="the node's local API port")
    client.add_argument("--config-dir", type=Path, metavar="DIR", help="settings directory of the node")
    status = commands.add_parser(
        "status", parents=[client], help="show this machine's node", description="Show this machine's node."
    )
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    peers = commands.add_parser(
        "peers", parents=[client], help="list the pool's other nodes", description="List the live peers."
    )
    peers.add_argument("--json", action="store_true", help="print the raw list as JSON")
    for command, (_, summary, _) in _SWITCH_COMMANDS.items():
        switch = commands.add_parser(
            command, parents=[client], help=summary, description=summary.capitalize() + "."
        )
        switch.add_argument("state", choices=["on", "off"])
    route = commands.add_parser(
        "route",
        parents=[client],
        help="show where a request for a model would go",
        description="Rank the pool's nodes for a request for MODEL, with each estimate's terms.",
    )
    route.add_argument("model", metavar="MODEL")
    route.add_argument("--json", action="store_true", help="print the raw decision as JSON")
    pull = commands.add_parser(
        "pull",
        parents=[client],
        help="get a model: from a pool member that has it, else from its registry",
        description="Have this machine's Ollama get MODEL: copied from a pool member that has it (verified "
        "and resumable, as Ollama pulls), else pulled from the model's registry.",
    )
    pull.add_argument("model", metavar="MODEL")
    source = pull.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", metavar="NODE", help="copy it from this member (name or id)")
    source.add_argument(
        "--from-registry",
        dest="source",
        action="store_const",
        const="registry",
        help="pull it from its registry",
    )
    audit = commands.add_parser(
        "audit",
        parents=[client],
        help="show what peers used this machine for",
        description="List the last requests peers had this machine serve: from the running node, or from "
        "its audit log when none runs.",
    )
    audit.add_argument("--limit", type=_positive, default=50, metavar="N", help="how many (default 50)")
    audit.add_argument("--json", action="store_true", help="print the raw entries as JSON")
    pool = commands.add_parser(
        "pool",
        help="make, join, leave or manage a private pool",
        description="A private pool: machines admitted one at a time, each known by its key; they speak "
        "mutual TLS and refuse everyone else. Without one, the pool is every InferHub on the local network, "
        "unauthenticated.",
    )
    actions = pool.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "create", parents=[client], help="make a private pool with this machine as its authority"
    )
    actions.add_parser(
        "invite", parents=[client], help="make a one-time code for one machine to join (the authority only)"
    )
    join = actions.add_parser("join", parents=[client], help="join a private pool with an invite's code")
    join.add_argument("code", metavar="CODE", help="the code `inferhub pool invite` printed on the authority")
    join.add_argument(
        "--at",
        metavar="HOST[:PORT]",
        help="the pool's authority; by default every pool's machine seen on mDNS is asked",
    )
    actions.add_parser("members", parents=[client], help="list the pool's members, and the machines removed")
    remove = actions.add_parser(
        "remove", parents=[client], help="remove a machine from the pool (the authority only)"
    )
    remove.add_argument("node", metavar="NODE", help="the member's node id or name")
    actions.add_parser("leave", parents=[client], help="leave the private pool for the LAN's open pool")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    # No command starts the tray app with the remembered settings.
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv) or ["serve"])
    if args.command in ("status", "peers", "route", *_SWITCH_COMMANDS):
        return _client(args)
    if args.command == "pool":
        return _pool(args)
    if args.command == "audit":
        return _audit(args)
    if args.command == "pull":
        return _pull(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        # One flag per user setting, named alike.
        flags = {key: getattr(args, key, None) for key in USER_FIELDS}
        store = SettingsStore(args.config_dir, flags)
        # A switch given as a flag is remembered, as the same switch in the tray is.
        if remembered := {key: flags[key] for key in SWITCHES if flags[key] is not None}:
            store.change(**remembered)
    except (ConfigError, SettingsNotSaved) as exc:
        parser.exit(2, f"inferhub: error: {exc}\n")
    settings = store.settings
    try:
        if args.headless:
            return _run(store)
        # Qt is loaded only for the app, so the headless node and the client commands start fast without it.
        from .ui.app import run_app

        return run_app(store)
    except ConfigError as exc:
        parser.exit(2, f"inferhub: error: {exc}\n")
    except PortTaken as exc:
        _log.error("%s", exc)
        return 1
    except OSError as exc:
        _log.error(
            "cannot listen on 127.0.0.1:%d: %s. Choose a port with --api-port",
            settings.api_port,
            exc.strerror or exc,
        )
        return 1


def _node(args: argparse.Namespace) -> tuple[Path, dict[str, Any], int]:
    """Return the node's config directory, its settings file's table and its local API port; raise
    ConfigError for a settings file that cannot be read."""
    config_dir = args.config_dir or default_config_dir()
    table = read_settings_file(config_dir)
    return config_dir, table, args.api_port or table.get("api_port", DEFAULT_API_PORT)


def _control(config_dir: Path, url: str, body: bytes | None = None) -> urllib.request.Request:
    """Return a request to a control path of the node of `config_dir`, bearing its control token; raise
    ConfigError if the token cannot be read (another user's node)."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        request.add_header(CONTROL_HEADER, read_control_token(config_dir))
    except ConfigError:
        if (config_dir / TOKEN_FILE).exists():
            raise
        # No node has run here yet: the request finds none, and says so.
    return request


def _client(args: argparse.Namespace) -> int:
    try:
        config_dir, _, port = _node(args)
    except ConfigError as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    base = f"http://127.0.0.1:{port}"
    if args.command in _SWITCH_COMMANDS:
        return _switch(args, config_dir, base, port)
    try:
        path = {
            "status": STATUS_PATH,
            "peers": PEERS_PATH,
            "route": f"{ROUTE_PATH}?{urllib.parse.urlencode({'model': getattr(args, 'model', '')})}",
        }[args.command]
        with urllib.request.urlopen(_control(config_dir, base + path), timeout=_CLIENT_TIMEOUT_S) as reply:
            answer = json.load(reply)
        named: list[Any] = []
        if args.command == "peers" and not args.json:
            request = _control(config_dir, base + ADDRESSES_PATH)
            with urllib.request.urlopen(request, timeout=_CLIENT_TIMEOUT_S) as reply:
                named = json.load(reply)
        usage: dict[str, Any] = {}
        if args.command == "status" and not args.json:
            request = _control(config_dir, base + USAGE_PATH)
            with urllib.request.urlopen(request, timeout=_CLIENT_TIMEOUT_S) as reply:
                usage = json.load(reply)
    except urllib.error.HTTPError as exc:
        return _refused(port, exc)
    except ConfigError as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        return _no_node(port, exc)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    try:
        if args.command == "status":
            print("\n".join([format_status(NodeStatus.from_json(answer)), *format_usage(usage)]))
        elif args.command == "peers":
            print(
                format_peers(
                    [PeerState.from_json(peer) for peer in answer], [AddressState.from_json(a) for a in named]
                )
            )
        else:
            print(format_route(answer))
    except (MalformedRecord, TypeError) as exc:
        print(
            f"inferhub: the node on 127.0.0.1:{port} answered what this version cannot read: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def _pull(args: argparse.Namespace) -> int:
    """Pull a model through the running node, printing Ollama's progress as `ollama pull` does, a line a
    layer; return 0 once the model is in."""
    try:
        _, _, port = _node(args)
    except ConfigError as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/pull",
        data=json.dumps({"model": args.model}).encode(),
        headers={"Content-Type": "application/json", **({FROM_HEADER: args.source} if args.source else {})},
    )
    said = ""
    try:
        # A copy has no time limit: each line comes as it goes.
        with urllib.request.urlopen(request) as reply:
            for raw in reply:
                line = json.loads(raw)
                if "error" in line:
                    print(f"inferhub: {line['error']}", file=sys.stderr)
                    return 1
                status = str(line.get("status", ""))
                if line.get("total") and line.get("completed") is not None:
                    status += f" {100 * int(line['completed']) // max(1, int(line['total']))}%"
                if status != said:
                    print(status, flush=True)
                    said = status
    except urllib.error.HTTPError as exc:
        return _refused(port, exc)
    except (OSError, ValueError) as exc:
        return _no_node(port, exc)
    return 0


def _switch(args: argparse.Namespace, config_dir: Path, base: str, port: int) -> int:
    """Turn a switch on or off: in the running node, else in the settings file it starts from."""
    key, _, said = _SWITCH_COMMANDS[args.command]
    on = args.state == "on"
    body = json.dumps({key: on}).encode()
    try:
        request = _control(config_dir, base + SWITCHES_PATH, body)
        with urllib.request.urlopen(request, timeout=_CLIENT_TIMEOUT_S) as reply:
            print(f"{said} {'on' if json.load(reply)[key] else 'off'}")
        return 0
    except urllib.error.HTTPError as exc:
        return _refused(port, exc)
    except ConfigError as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        # Only with no node listening is the file the place to change: a node that is slow to answer
        # would overwrite it with its own switches.
        if not isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
            print(f"inferhub: the node on 127.0.0.1:{port} did not answer: {exc}", file=sys.stderr)
            return 1
    try:
        store = SettingsStore(args.config_dir)
        store.change(**{key: on})
    except (ConfigError, SettingsNotSaved) as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    print(f"{said} {'on' if getattr(store.settings, key) else 'off'} (no node is running here; it starts so)")
    return 0


def _no_node(port: int, exc: OSError | ValueError) -> int:
    """Say that no node answers on the port, and why; return the exit status for it."""
    reason = getattr(exc, "reason", exc)
    print(
        f"inferhub: no InferHub node answers on 127.0.0.1:{port} ({reason}); "
        "start one with `inferhub serve --headless`",
        file=sys.stderr,
    )
    return 1


def _refused(port: int, exc: urllib.error.HTTPError) -> int:
    """Say what the node answered to a request it refused; return the exit status for it."""
    body = exc.read()[:2000]
    try:
        error = json.loads(body)["error"]
        said = error if isinstance(error, str) else repr(body)
    except (ValueError, KeyError, TypeError):
        said = repr(body[:500])
    print(f"inferhub: the node on 127.0.0.1:{port} answered HTTP {exc.code}: {said}", file=sys.stderr)
    return 1


def _audit(args: argparse.Namespace) -> int:
    """Print the requests peers had this machine serve, as the running node tells, else as its log holds."""
    try:
        config_dir, _, port = _node(args)
    except ConfigError as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{port}{AUDIT_PATH}?limit={args.limit}"
    try:
        with urllib.request.urlopen(_control(config_dir, url), timeout=_CLIENT_TIMEOUT_S) as reply:
            entries = json.load(reply)
    except urllib.error.HTTPError as exc:
        return _refused(port, exc)
    except ConfigError as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    except OSError:
        # No node runs: the log is where it writes it.
        try:
            entries = read_audit(config_dir, args.limit)
        except OSError as exc:
            print(f"inferhub: cannot read the audit log in {config_dir}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(entries, indent=2) if args.json else format_audit(entries))
    return 0


def format_audit(entries: list[dict[str, Any]]) -> str:
    """Render the audit log for people: one row per request a peer had this machine serve, newest last."""
    if not entries:
        return "no peer has used this machine yet"
    rows = [("when", "peer", "model", "tokens", "duration", "outcome"), *(audit_row(e) for e in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        # Figures to the right; the outcome, last, as long as it is.
        cells = [row[i].rjust(w) if i in (3, 4) else row[i].ljust(w) for i, w in enumerate(widths)]
        lines.append("  ".join([*cells, row[5]]))
    return "\n".join(lines)


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _pool(args: argparse.Namespace) -> int:
    """Make, join, leave or manage the private pool: its files change here, in the config directory, and
    a running node is told to take them up; removing goes through the running node, which keeps the
    roster, when there is one."""
    try:
        config_dir, _, port = _node(args)
        settings = load_settings(config_dir)
        identity = load_identity(config_dir)
        pool = PrivatePool.load(config_dir, identity)
        base = f"http://127.0.0.1:{port}"
        if args.action == "members":
            info = _ask_node(config_dir, base + POOL_PATH)
            print(format_pool(info if info is not None else pool_info(pool, nearby=[], online=None)))
            return 0
        if args.action == "remove":
            info = _ask_node(config_dir, base + POOL_PATH, {"remove": args.node})
            if info is None:
                if pool is None:
                    raise ConfigError(
                        "this machine is in the LAN's open pool, which has no members to remove"
                    )
                pool.remove(pool.roster.resolve(args.node))
                info = pool_info(pool, nearby=[], online=None)
            print(f"Removed {args.node}: every member refuses it from its next look at the roster.")
            print(format_pool(info))
            return 0
        if args.action == "invite":
            if pool is None:
                raise ConfigError("this machine is in no private pool; `inferhub pool create` makes one")
            code = pool.invite()
            print(
                f"An invite to the private pool {pool.pool_id}, for one machine, for a day:\n\n    {code}\n"
            )
            print(
                f"On that machine: `inferhub pool join {code}` (with --at THIS-MACHINE:{settings.share_port} "
                "where mDNS does not reach). Give the code to that machine's owner only."
            )
            return 0
        if args.action in ("create", "join") and pool is not None:
            raise ConfigError(
                f"this machine is in the private pool {pool.pool_id} already; `inferhub pool leave` first"
            )
        # The name the machine goes by: its running node's (a flag may have given it for the run).
        running = _ask_node(config_dir, base + STATUS_PATH) if args.action in ("create", "join") else None
        name = NodeStatus.from_json(running).name if running is not None else settings.name
        if args.action == "create":
            pool = create_pool(config_dir, identity, name)
            said = f"Made the private pool {pool.pool_id}; this machine is its authority."
            said += "\nAdmit machines one at a time: `inferhub pool invite` makes a code for each."
        elif args.action == "join":
            places = [parse_peer(args.at)] if args.at else _nearby_pools(config_dir, base)
            pool = asyncio.run(join_pool(config_dir, identity, name, args.code, places))
            said = f"Joined the private pool {pool.pool_id}."
        else:
            if pool is not None and pool.authority is not None:
                print(
                    "inferhub: this machine was the pool's authority: no machine can be admitted to the pool "
                    "or removed from it any more",
                    file=sys.stderr,
                )
            leave_pool(config_dir)
            said = "Left the private pool: this machine is in the LAN's open pool."
        info = _ask_node(config_dir, base + POOL_PATH, {})
    except urllib.error.HTTPError as exc:
        return _refused(port, exc)
    except (ConfigError, SettingsNotSaved, Unauthorized) as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 2
    except MalformedRecord as exc:
        print(
            f"inferhub: the node on 127.0.0.1:{port} answered what this version cannot read: {exc}",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"inferhub: error: {exc}", file=sys.stderr)
        return 1
    print(said)
    if info is None:
        print("No node is running here; it uses this pool when it starts.")
    return 0


def _ask_node(config_dir: Path, url: str, fields: dict[str, Any] | None = None) -> Any:
    """GET a control path of the running node, or POST `fields` to it; return its JSON answer, or None
    when no node runs. Raise HTTPError for a refusal, OSError when the node does not answer."""
    body = json.dumps(fields).encode() if fields is not None else None
    try:
        with urllib.request.urlopen(_control(config_dir, url, body), timeout=_POOL_TIMEOUT_S) as reply:
            return json.load(reply)
    except urllib.error.HTTPError:
        raise
    except OSError as exc:
        if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
            return None
        raise OSError(f"the node on {url.split('/_')[0]} did not answer: {exc}") from exc


def _nearby_pools(config_dir: Path, base: str) -> list[tuple[str, int]]:
    """Return where the machines of private pools seen on mDNS are, as the running node knows them."""
    info = _ask_node(config_dir, base + POOL_PATH)
    if info is None:
        raise ConfigError(
            "no node runs here to look for the pool on the LAN: give the authority's address with "
            "--at HOST[:PORT]"
        )
    places = [parse_peer(n["address"]) for n in info.get("nearby", [])]
    if not places:
        raise ConfigError(
            "no private pool is seen on the LAN: give the authority's address with --at HOST[:PORT]"
        )
    return places


def format_pool(info: dict[str, Any]) -> str:
    """Render the pool for people: its id and this machine's part in it, then its members."""
    if info.get("pool") is None:
        lines = [
            "This machine is in the LAN's open pool: while it shares, any InferHub on the local network may "
            "use it, and peers are not authenticated. `inferhub pool create` makes a private pool."
        ]
        lines += [f"  private pool {n['pool']} seen at {n['address']}" for n in info.get("nearby", [])]
        return "\n".join(lines)
    role = "its authority" if info.get("authority") else "a member"
    lines = [f"Private pool {info['pool']} (roster version {info['version']}); this machine is {role}."]
    rows = [("name", "node id", "online")] + [
        (
            m["name"] + (" (authority)" if m["authority"] else ""),
            m["id"],
            {True: "yes", False: "no", None: "?"}[m["online"]],
        )
        for m in info["members"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if info["removed"]:
        lines.append("removed: " + ", ".join(info["removed"]))
    return "\n".join(lines)


def format_route(decision: dict[str, Any]) -> str:
    """Render a routing decision for people: the ranking with each term, then the nodes left out."""
    lines = [f"{decision['model']}: {decision['choice']}"]
    header = ("", "node", "total", "queue", "load", "evict", "rtt", "run")
    rows = [header] + [
        (
            str(n),
            r["node"] + (" (this machine)" if r["local"] else ""),
            *(f"{r[k]:.2f}s" for k in ("total_s", "queue_s", "load_s", "evict_s", "rtt_s", "run_s")),
        )
        for n, r in enumerate(decision["ranked"], 1)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # With no node ranked, the first line says so and only the reasons follow.
    for row, ranked in zip(rows, [None, *decision["ranked"]], strict=True) if decision["ranked"] else ():
        cells = "  ".join(
            cell.rjust(w) if i > 1 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append(cells.rstrip() + (f"  {ranked['basis']}" if ranked else ""))
    for left in decision["left_out"]:
        lines.append(
            f"left out: {left['node']}{' (this machine)' if left['local'] else ''}: {left['reason']}"
        )
    return "\n".join(lines)


def format_peers(peers: list[PeerState], named: Sequence[AddressState] = ()) -> str:
    """Render the peer list for people: one block per peer, then the peers named by address and how
    reaching each goes."""
    blocks = []
    if not peers:
        blocks.append(
            "no peers seen: other machines need InferHub running on this network; where multicast is "
            "blocked, add them with --peer HOST:PORT"
        )
    elif any(peer.status.pool is None for peer in peers):
        blocks.append(
            "open pool: these peers are not authenticated, and any machine on the LAN may claim a name; "
            "a private pool (`inferhub pool create`) proves each member by its key"
        )
    for peer in peers:
        sharing = (
            f"paused: {peer.status.owner.paused}"
            if peer.status.owner.paused
            else ("sharing" if peer.share else "not sharing")
        )
        head = f"{peer.name}  {peer.address}:{peer.port}  {sharing}"
        load = peer.status.load
        blocks.append(
            "\n".join(
                [head, f"load     {load.active}/{load.slots} running"]
                + [
                    line
                    for line in format_status(peer.status).splitlines()[1:]
                    if not line.startswith(("state", "backend"))
                ]
            )
        )
    if named:
        width = max(len(entry.address) for entry in named)
        lines = [f"  {entry.address:<{width}}  {_ADDRESS_SAID[entry.state]}{entry.detail}" for entry in named]
        blocks.append("\n".join(["by address", *lines]))
    return "\n\n".join(blocks)


# How `inferhub peers` says each state of a peer named by address, before its detail.
_ADDRESS_SAID = {
    "reaching": "reaching…",
    "reached": "reached ",
    "unreachable": "unreachable: ",
    "refused": "refused: ",
}


def format_usage(usage: dict[str, Any]) -> list[str]:
    """Say who uses this machine now and what each peer had it serve today, one line each."""
    now = ", ".join(f"{u['peer']} ({u['requests']} under way)" for u in usage.get("now", ()))
    today = [
        PeerUsage(u["peer"], u["requests"], u["tokens"], u["seconds"]).words() for u in usage.get("today", ())
    ]
    lines = [f"using    {now or 'no peer right now'}"]
    if today:
        lines += [f"{'today' if n == 0 else '':<9}{line}" for n, line in enumerate(today)]
        if not usage.get("whole_day", True):
            lines.append(f"{'':<9}(at least: the audit log's last entries do not reach back to midnight)")
    else:
        lines.append("today    no peer has used this machine")
    return lines


def format_status(status: NodeStatus) -> str:
    """Render a node's status for people."""
    backend = status.backend
    lines = [f"{status.name}  InferHub {status.version}  {status.api_url}  (id {status.node_id[:8]})"]
    # In the tray's and the dashboard's words, so they agree.
    lines.append(f"state    {' · '.join(status.state_words())}")
    if backend.reachable:
        lines.append(f"backend  {backend.kind} {backend.version} at {backend.url}: up")
    else:
        lines.append(f"backend  {backend.kind} at {backend.url}: DOWN, {backend.error}")
    if status.telemetry:
        lines += _format_telemetry(status.telemetry)
    if status.owner.watching:
        kept = (
            f"; keeps {status.owner.reserve_mib / 1024:g} GiB of VRAM free"
            if status.owner.reserve_mib
            else ""
        )
        lines.append(f"owner    watches {status.owner.watching}{kept}")
    loaded = {m.name: m for m in backend.loaded}
    rows = []
    for model in sorted(backend.installed, key=lambda m: m.name):
        where = ""
        if running := loaded.get(model.name):
            where = f"loaded, {_gib(running.size_vram)} in VRAM"
        rows.append((model.name, model.parameter_size, model.quantization_level, _gib(model.size), where))
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(5)]
    for n, row in enumerate(rows):
        cells = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append(f"{'models' if n == 0 else '':<9}{cells}".rstrip())
    if not rows and backend.reachable:
        lines.append("models   none installed: `ollama pull llama3.2` fetches one")
    return "\n".join(lines)


def _format_telemetry(telemetry: Telemetry) -> list[str]:
    lines = []
    for n, gpu in enumerate(telemetry.gpus):
        extras = "".join(
            text
            for value, text in [
                (gpu.utilization_pct, f", {gpu.utilization_pct}% busy"),
                (gpu.temperature_c, f", {gpu.temperature_c}°C"),
            ]
            if value is not None
        )
        memory = f"{gpu.used_mib} of {gpu.total_mib} MiB used"
        lines.append(f"{'gpus' if n == 0 else '':<9}{gpu.index}: {gpu.name}, {memory}{extras}")
    system = telemetry.system
    if not telemetry.gpus:
        lines.append(
            "gpus     none: models run from system memory" if system.unified_memory else "gpus     unknown"
        )
    if telemetry.nvml_error:
        lines.append(f"         NVML: {telemetry.nvml_error}")
    lines.append(
        f"system   CPU {system.cpu_pct:.0f}% of {system.cpu_count} cores, "
        f"RAM {system.ram_free_mib / 1024:.1f} of {system.ram_total_mib / 1024:.1f} GiB free"
    )
    return lines


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def _run(store: SettingsStore) -> int:
    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:  # Windows' event loops have no signal handlers
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        await serve(store, stop)

    asyncio.run(run())
    return 0
