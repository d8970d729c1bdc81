"""What the desktop app shows, read from the node's status and its peers': pure, no Qt."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping, Sequence

from ..core import (
    DEFAULT_SHARE_PORT,
    SWITCHES,
    AddressState,
    NodeStatus,
    PeerState,
    RequestUnderway,
    short_name,
)


@dataclasses.dataclass(frozen=True)
class NodeView:
    """One node of the pool as the dashboard and the menu show it."""

    node_id: str
    name: str
    address: str
    local: bool
    sharing: bool
    gpu: str  # e.g. "2x RTX 4090", "CPU"
    gpu_count: int
    vram_used_mib: int
    vram_total_mib: int
    utilization_pct: int | None  # the mean over its GPUs; None without NVML
    loaded: tuple[str, ...]
    installed: tuple[str, ...]
    active: int
    slots: int
    tokens_per_s: float | None  # the mean of the speeds it has learnt, over its models
    backend_up: bool
    backend_error: str | None
    tokens_generated: int
    # How this node's breaker sees a peer: "closed", or why it is open.
    breaker: str = "closed"
    # Why its owner has paused sharing for now; None while it shares as switched.
    paused: str | None = None

    @property
    def healthy(self) -> bool:
        return self.backend_up and self.breaker == "closed"


@dataclasses.dataclass(frozen=True)
class ModelView:
    """A model of the pool: where it is installed, and where it is loaded now."""

    name: str
    installed_on: tuple[str, ...]
    loaded_on: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something wrong that the owner can act on, said in plain words."""

    title: str
    detail: str
    # Problems that stop this machine serving at all come first.
    severe: bool
    # What the owner can do about it, as buttons.
    actions: tuple[Action, ...] = ()
    # What the node said, word for word, for whoever looks closer (a tooltip).
    technical: str = ""


class Action(enum.Enum):
    """A step the owner can take on a problem, with the words of its button."""

    INSTALL_OLLAMA = "Download Ollama"
    OPEN_SETTINGS = "Choose a server in Settings"
    RETRY = "Try again"
    FIREWALL_HELP = "Firewall help"
    INVITE = "Invite a machine"


@dataclasses.dataclass(frozen=True)
class PoolView:
    """This node and its peers at one moment."""

    me: NodeView
    peers: tuple[NodeView, ...]
    switches: Mapping[str, bool]
    api_url: str
    # Peers' requests running on this machine's backend now.
    serving: int
    share_port: int = DEFAULT_SHARE_PORT
    # The private pool's public id; None in the LAN's open pool.
    pool: str | None = None
    # The peers the owner named by address, and how reaching each goes.
    addresses: tuple[AddressState, ...] = ()
    # The inference requests this node is answering now, oldest first.
    underway: tuple[RequestUnderway, ...] = ()
    # Where the nodes nearby that belong to another pool are: seen, never used.
    elsewhere: tuple[str, ...] = ()
    # What this machine does for the pool, in the words every part of the app says it (NodeStatus's).
    state: tuple[str, ...] = ("not sharing", "open LAN pool")

    @property
    def nodes(self) -> tuple[NodeView, ...]:
        return (self.me, *self.peers)

    @property
    def gpu_count(self) -> int:
        return sum(n.gpu_count for n in self.nodes)

    @property
    def tokens_generated(self) -> int:
        return sum(n.tokens_generated for n in self.nodes)

    @property
    def models(self) -> tuple[ModelView, ...]:
        """The models this machine may use: its own and the sharing peers', by name."""
        usable = [self.me, *(p for p in self.peers if p.sharing)]
        names = sorted({m for n in usable for m in n.installed})
        return tuple(
            ModelView(
                name,
                tuple(n.name for n in usable if name in n.installed),
                tuple(n.name for n in usable if name in n.loaded),
            )
            for name in names
        )

    def trust(self) -> str:
        """Say in a few words whom the peers are proven to be."""
        if self.pool is None:
            return "Open LAN pool: peers are not authenticated"
        return f"Private pool {self.pool[:8]}: every peer proven by its key"

    def share_label(self, *, on: bool) -> str:
        """Name the share switch for what this machine has (a GPU or not, a model server or not yet), and
        whether sharing is paused for its owner."""
        what = "this GPU" if self.me.gpu_count else "this machine"
        said = f"Sharing {what}" if on else f"Share {what}"
        if not self.me.backend_up:
            return f"{said} (no model server yet)"
        # On, and paused for the owner: the switch stays where the owner put it, and says so.
        return f"{said} (paused)" if self.me.paused else said

    def hint(self) -> str:
        """Say why machines seen nearby are not peers, if any are: they belong to another pool."""
        if not self.elsewhere:
            return ""
        n = len(self.elsewhere)
        if n == 1:
            which, them = f"The machine at {self.elsewhere[0]} is", "it"
        else:
            which, them = (
                f"{n} machines nearby ({', '.join(self.elsewhere[:3])}{', …' * (n > 3)}) are",
                "them",
            )
        if self.pool is None:
            return (
                f"{which} in a private pool, so this machine does not use {them}. To use {them}, ask that "
                "pool's owner for an invite and join it in Settings."
            )
        return (
            f"{which} in the open LAN pool or another private pool, so this pool does not use {them}. "
            f"Invite {them} to join this pool from Settings."
        )

    def summary(self) -> str:
        """Say in one line what the pool is: peers, GPUs and models."""
        return " · ".join(
            [
                _count(len(self.peers), "peer"),
                _count(self.gpu_count, "GPU"),
                _count(len(self.models), "model"),
            ]
        )

    def problems(self, *, alone_for_s: float, lost: Mapping[str, str] | None = None) -> list[Problem]:
        """Say what is wrong, worst first; `alone_for_s` is how long no peer has been seen, `lost` the
        peers that went without saying goodbye (name: what happened), until they come back. Severe is
        what leaves this machine's own requests unserved."""
        found = []
        if not self.me.backend_up:
            # The pool's other machines may still serve this one's requests.
            served_elsewhere = any(p.sharing and p.healthy and p.installed for p in self.peers)
            elsewhere = (
                "Your requests go to your colleagues' machines meanwhile."
                if served_elsewhere
                else "Until one runs, nothing can answer your requests."
            )
            found.append(
                Problem(
                    "No model server on this machine",
                    "InferHub shares the model server of this machine, and none answers. Install "
                    "Ollama, or start LM Studio, llama.cpp or vLLM: InferHub finds them by itself. "
                    f"{elsewhere}",
                    severe=not served_elsewhere,
                    actions=(Action.INSTALL_OLLAMA, Action.OPEN_SETTINGS, Action.RETRY),
                    technical=self.me.backend_error or "",
                )
            )
        for name, what in (lost or {}).items():
            found.append(
                Problem(
                    f"Lost {name}",
                    f"{name} {what}. Requests go to the other machines; it is back as soon as it answers.",
                    severe=False,
                )
            )
        for peer in self.peers:
            if peer.sharing and not peer.healthy:
                down = not peer.backend_up
                why = "Its model server does not answer" if down else "Its last requests failed"
                found.append(
                    Problem(
                        f"{peer.name} cannot serve right now",
                        f"{why}. Requests go to the other machines until it recovers.",
                        severe=False,
                        technical=(peer.backend_error or "") if down else peer.breaker,
                    )
                )
        if not self.peers and not lost and alone_for_s >= NO_PEERS_AFTER_S:
            if self.pool is not None:
                found.append(
                    Problem(
                        "No other member of the private pool is online",
                        "Your requests run on this machine. Invite a machine, or start InferHub on the "
                        "members' machines.",
                        severe=False,
                        actions=(Action.INVITE,),
                    )
                )
            else:
                found.append(
                    Problem(
                        "No other InferHub seen on this network",
                        "Your requests run on this machine. Machines running InferHub find each other on "
                        "the local network unless a firewall stands between them; across a VPN or "
                        "another subnet, add a colleague's machine by its address below.",
                        severe=False,
                        actions=(Action.FIREWALL_HELP,),
                    )
                )
        return found


# How long a node may be alone before the dashboard suggests why.
NO_PEERS_AFTER_S = 10.0


def firewall_hint(platform: str, share_port: int) -> str:
    """Say how to let mDNS and the share API through this OS's firewall."""
    if platform == "win32":
        return (
            "Make sure this network is set to Private, and allow InferHub through Windows Defender "
            "Firewall for private networks."
        )
    if platform == "darwin":
        return (
            "Allow InferHub in System Settings ▸ Privacy & Security ▸ Local Network, and allow its "
            "incoming connections in System Settings ▸ Network ▸ Firewall."
        )
    return (
        f"With ufw: `sudo ufw allow 5353/udp && sudo ufw allow {share_port}/tcp`; with firewalld: "
        f"`sudo firewall-cmd --add-service=mdns --add-port={share_port}/tcp --permanent && "
        "sudo firewall-cmd --reload`."
    )


def node_view(status: NodeStatus, *, local: bool, address: str = "", breaker: str = "closed") -> NodeView:
    """Read a node's status (its own, or a peer's as last polled)."""
    telemetry = status.telemetry
    gpus = telemetry.gpus if telemetry else ()
    utilization = [g.utilization_pct for g in gpus if g.utilization_pct is not None]
    total = telemetry.vram_total_mib if telemetry else 0
    speeds = [f.tokens_per_s.mean for f in status.speeds.models.values() if f.tokens_per_s]
    backend = status.backend
    return NodeView(
        node_id=status.node_id,
        name=status.name,
        address=address,
        local=local,
        # A peer paused for its owner takes no requests, whatever its switch says.
        sharing=status.share and (local or status.owner.paused is None),
        gpu=telemetry.summary() if telemetry else "no GPU readings",
        gpu_count=len(gpus),
        vram_used_mib=max(0, total - (telemetry.vram_free_mib if telemetry else 0)),
        vram_total_mib=total,
        utilization_pct=round(sum(utilization) / len(utilization)) if utilization else None,
        loaded=tuple(m.name for m in backend.loaded),
        installed=tuple(sorted(m.name for m in backend.installed)),
        active=status.load.active,
        slots=status.load.slots,
        tokens_per_s=sum(speeds) / len(speeds) if speeds else None,
        backend_up=backend.reachable,
        backend_error=backend.error,
        tokens_generated=status.tokens_generated,
        breaker=breaker,
        paused=status.owner.paused if status.share else None,
    )


def pool_view(
    status: NodeStatus,
    peers: Sequence[PeerState],
    addresses: Sequence[AddressState] = (),
    *,
    underway: Sequence[RequestUnderway] = (),
    elsewhere: Sequence[str] = (),
) -> PoolView:
    """Read this node's status, its peers, its peers named by address, the requests it answers now and
    the nodes of other pools nearby into a PoolView."""
    return PoolView(
        me=node_view(status, local=True, address="this machine"),
        peers=tuple(
            node_view(p.status, local=False, address=f"{p.address}:{p.port}", breaker=p.breaker)
            for p in peers
        ),
        switches={key: getattr(status, key) for key in SWITCHES},
        api_url=status.api_url,
        serving=status.load.remote,
        share_port=status.share_port,
        pool=status.pool,
        addresses=tuple(addresses),
        underway=tuple(underway),
        elsewhere=tuple(elsewhere),
        state=tuple(status.state_words()),
    )


def vram_bar(used_mib: int, total_mib: int, width: int = 10) -> str:
    """Draw VRAM use as a text bar, e.g. "▰▰▰▱▱▱▱▱▱▱ 7.5/24 GiB"."""
    if total_mib <= 0:
        return "no VRAM reading"
    filled = min(width, round(width * used_mib / total_mib))
    return f"{'▰' * filled}{'▱' * (width - filled)} {used_mib / 1024:.1f}/{total_mib / 1024:.0f} GiB"


def short_models(names: Sequence[str]) -> str:
    """List model names as people write them (no registry or library prefix)."""
    return ", ".join(short_name(name) for name in names)


def sentence(words: str) -> str:
    """Begin words as a sentence: "sharing this GPU" becomes "Sharing this GPU"."""
    return words[:1].upper() + words[1:]


def _count(n: int, noun: str) -> str:
    return f"{n or 'no'} {noun}{'s' * (n != 1)}"


# Faster than any model server generates one stream: a figure past it comes from odd durations.
_MAX_PLAUSIBLE_TOK_S = 20_000.0


def format_when(at: float, now: float | None = None) -> str:
    """Say when something happened, one way across the app: the time today, else the day and time."""
    moment = time.localtime(at)
    today = time.localtime(time.time() if now is None else now)
    if moment[:3] == today[:3]:
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%b %d, %H:%M", moment).replace(" 0", " ", 1)


def format_rate(tokens_per_s: float | None) -> str:
    """Say a generation speed as people read it; none, or one no server could reach, as a dash."""
    if not tokens_per_s or tokens_per_s > _MAX_PLAUSIBLE_TOK_S:
        return "—"
    return f"{tokens_per_s:.1f} tok/s" if tokens_per_s < 10 else f"{tokens_per_s:,.0f} tok/s"


def format_duration(seconds: float | None) -> str:
    """Say how long something took: milliseconds, seconds, or minutes and seconds."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"
