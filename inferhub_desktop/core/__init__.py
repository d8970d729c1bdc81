"""InferHub's core: asyncio only, never Qt. The UI and the CLI use what this module exports."""

from .api.endpoints import PEERS_PATH, ROUTE_PATH, STATUS_PATH, SWITCHES_PATH
from .errors import ApiError, BackendUnavailable, ConfigError, InferhubError
from .node import Node, serve
from .settings import (
    DEFAULT_API_PORT,
    SWITCHES,
    USER_FIELDS,
    Settings,
    default_config_dir,
    load_settings,
    read_settings_file,
    update_settings_file,
)

__all__ = [
    "DEFAULT_API_PORT",
    "PEERS_PATH",
    "ROUTE_PATH",
    "STATUS_PATH",
    "SWITCHES",
    "SWITCHES_PATH",
    "USER_FIELDS",
    "ApiError",
    "BackendUnavailable",
    "ConfigError",
    "InferhubError",
    "Node",
    "Settings",
    "default_config_dir",
    "load_settings",
    "read_settings_file",
    "serve",
    "update_settings_file",
]
