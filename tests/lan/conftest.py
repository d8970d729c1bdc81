"""Before the LAN tests build namespaces, remove the ones that killed runs of them left behind."""

from __future__ import annotations

import pytest

from tests.lan.netns import netns_unavailable, remove_leftovers, stale_prefixes


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_namespaces() -> None:
    """Delete namespaces whose owning test process is gone; a live run's are left alone."""
    if netns_unavailable() is None:
        for prefix in stale_prefixes():
            remove_leftovers(prefix)
