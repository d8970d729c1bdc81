"""InferHub's core: asyncio only, never Qt. The UI and the CLI use what this module exports."""

from .audit import audit_entry, audit_row, read_audit
from .control import TOKEN_FILE, control_token, read_control_token
from .events import (
    BackendChanged,
    Event,
    Events,
    PeerJoined,
    PeerLeft,
    RequestDone,
    SettingsChanged,
)
from .names import short_name
from .node import Node, serve
from .peers import PeerState
from .settings import (
    DEFAULT_API_PORT,
    DEFAULT_SHARE_PORT,
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
from .trust import PoolKey, join_code, new_secret, pool_key, read_join_code
from .wire.endpoints import AUDIT_PATH, PEERS_PATH, POOL_PATH, ROUTE_PATH, STATUS_PATH, SWITCHES_PATH
from .wire.errors import (
    ApiError,
    BackendUnavailable,
    ConfigError,
    InferhubError,
    MalformedRecord,
    SettingsNotSaved,
)
from .wire.headers import CONTROL_HEADER

__all__ = [
    "AUDIT_PATH",
    "CONTROL_HEADER",
    "DEFAULT_API_PORT",
    "DEFAULT_SHARE_PORT",
    "LIVE_SETTINGS",
    "PEERS_PATH",
    "POOL_PATH",
    "ROUTE_PATH",
    "STATUS_PATH",
    "SWITCHES",
    "SWITCHES_PATH",
    "TOKEN_FILE",
    "USER_FIELDS",
    "ApiError",
    "BackendChanged",
    "BackendUnavailable",
    "ConfigError",
    "Event",
    "Events",
    "InferhubError",
    "MalformedRecord",
    "Node",
    "NodeStatus",
    "PeerJoined",
    "PeerLeft",
    "PeerState",
    "PoolKey",
    "RequestDone",
    "Settings",
    "SettingsChanged",
    "SettingsNotSaved",
    "SettingsStore",
    "Telemetry",
    "audit_entry",
    "audit_row",
    "control_token",
    "default_config_dir",
    "join_code",
    "load_settings",
    "new_secret",
    "parse_host",
    "parse_peer",
    "pool_key",
    "read_audit",
    "read_control_token",
    "read_join_code",
    "read_settings_file",
    "serve",
    "short_name",
]
