"""The settings store: the one owner of the user's settings, and the only way to change them.

Every change (a tray switch, `inferhub share`, the control API, the settings dialog, joining a pool, a
peer added by address) is validated, written to the settings file atomically, then applied, then told
as one event. A change that cannot be saved is refused whole: memory and file stay as they were.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .events import Events, SettingsChanged
from .settings import (
    SETTINGS_FILE,
    USER_FIELDS,
    Settings,
    build_settings,
    check_type,
    default_config_dir,
    load_settings,
    not_saved,
    read_settings_file,
    write_settings_file,
)
from .wire.errors import ConfigError


class SettingsStore:
    """The settings of one config directory: its file, this run's flags and the environment."""

    def __init__(
        self,
        config_dir: Path | None = None,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """Read the settings; raise ConfigError if they are invalid.

        `flags` override the file for this run, until the user changes that setting another way: the
        last change a user made is the one that holds.
        """
        self.config_dir = config_dir or default_config_dir(environ)
        self._environ = environ
        self._flags = {key: value for key, value in (flags or {}).items() if value is not None}
        # Told of every change that took effect: the node, the desktop app.
        self.events = Events()
        self._settings = load_settings(self.config_dir, self._flags, environ)

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def path(self) -> Path:
        return self.config_dir / SETTINGS_FILE

    def check(self, **values: Any) -> Settings:
        """Return the settings these changes would give; raise ConfigError saying what is wrong with
        them. Nothing is saved."""
        return self._apply(read_settings_file(self.config_dir), values)[0]

    def change(self, **values: Any) -> Settings:
        """Change settings: validate, save, apply, tell; return the settings now in effect.

        Raise ConfigError for an invalid value and SettingsNotSaved for a file that cannot be written;
        either way nothing changes, in memory or on disk.
        """
        table = read_settings_file(self.config_dir)
        new, new_table = self._apply(table, values)
        if new_table != table:
            try:
                write_settings_file(self.config_dir, new_table)
            except OSError as exc:
                raise not_saved(self.config_dir, exc) from exc
        for key in values:
            self._flags.pop(key, None)
        old, self._settings = self._settings, new
        changed = frozenset(
            field.name
            for field in dataclasses.fields(Settings)
            if getattr(old, field.name) != getattr(new, field.name)
        )
        if changed:
            self.events.emit(SettingsChanged(new, old, changed))
        return new

    def _apply(self, table: Mapping[str, Any], values: Mapping[str, Any]) -> tuple[Settings, dict[str, Any]]:
        """Return the settings and the file's table with `values` applied; raise ConfigError for a value
        that is not valid."""
        saved: dict[str, Any] = {}
        for key, value in values.items():
            if key not in USER_FIELDS:
                raise ConfigError(f"{key!r} is not a setting; the settings are {', '.join(USER_FIELDS)}")
            value = check_type(key, value)
            saved[key] = list(value) if isinstance(value, tuple) else value
        new_table = {**table, **saved}
        flags = {key: value for key, value in self._flags.items() if key not in values}
        settings = build_settings(self.config_dir, self._settings.node_id, new_table, flags, self._environ)
        return settings, new_table
