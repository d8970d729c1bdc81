"""InferHub's core: asyncio only, never Qt. The UI and the CLI use what this module exports."""

from .audit import PeerUsage, audit_entry, audit_row, read_audit
from .codes import join_code, new_secret, read_join_code
from .control import TOKEN_FILE, control_token, read_control_token
from .copying import FROM_HEADER
from .events import (
    BackendChanged,
    Event,
    Events,
    PeerJoined,
    PeerLeft,
    RequestDone,
    RequestUnderway,
    SettingsChanged,
    SharingPaused,
)
from .identity import Identity, load_identity
from .names import short_name
from .node import Node, serve
from .peers import AddressState, PeerState
from .pool import PrivatePool, create_pool, join_pool, leave_pool, pool_info
from .settings import (
    DEFAULT_API_PORT,
    DEFAULT_SHARE_PORT,
    LEND_CHOICES,
    LIVE_SETTINGS,
    SWITCHES,
    USER_FIELDS,
    Settings,
    default_config_dir,
    load_settings,
    parse_host,
    parse_peer,
    read_settings_file,
)
from .status import NodeStatus
from .store import SettingsStore
from .telemetry import Telemetry
from .wire.endpoints import (
    ADDRESSES_PATH,
    AUDIT_PATH,
    PEERS_PATH,
    POOL_PATH,
    ROUTE_PATH,
    STATUS_PATH,
    SWITCHES_PATH,
    USAGE_PATH,
)
from .wire.errors import (
    ApiError,
    BackendUnavailable,
    ConfigError,
    InferhubError,
    MalformedRecord,
    PortTaken,
    SettingsNotSaved,
    Unauthorized,
)
from .wire.headers import CONTROL_HEADER

__all__ = [
    "ADDRESSES_PATH",
    "AUDIT_PATH",
    "CONTROL_HEADER",
    "DEFAULT_API_PORT",
    "DEFAULT_SHARE_PORT",
    "FROM_HEADER",
    "LEND_CHOICES",
    "LIVE_SETTINGS",
    "PEERS_PATH",
    "POOL_PATH",
    "ROUTE_PATH",
    "STATUS_PATH",
    "SWITCHES",
    "SWITCHES_PATH",
    "TOKEN_FILE",
    "USAGE_PATH",
    "USER_FIELDS",
    "AddressState",
    "ApiError",
    "BackendChanged",
    "BackendUnavailable",
    "ConfigError",
    "Event",
    "Events",
    "Identity",
    "InferhubError",
    "MalformedRecord",
    "Node",
    "NodeStatus",
    "PeerJoined",
    "PeerLeft",
    "PeerState",
    "PeerUsage",
    "PortTaken",
    "PrivatePool",
    "RequestDone",
    "RequestUnderway",
    "Settings",
    "SettingsChanged",
    "SettingsNotSaved",
    "SettingsStore",
    "SharingPaused",
    "Telemetry",
    "Unauthorized",
    "audit_entry",
    "audit_row",
    "control_token",
    "create_pool",
    "default_config_dir",
    "join_code",
    "join_pool",
    "leave_pool",
    "load_identity",
    "load_settings",
    "new_secret",
    "parse_host",
    "parse_peer",
    "pool_info",
    "read_audit",
    "read_control_token",
    "read_join_code",
    "read_settings_file",
    "serve",
    "short_name",
]
