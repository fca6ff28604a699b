"""Fixtures of the integration tests: a node's settings whose database traffic is counted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.delay_proxy import DelayProxy
from tests.support.servers import database_target, database_url_via
from workers.settings import Settings


@pytest.fixture
def counted(settings: Settings, database_url: str) -> Iterator[tuple[Settings, DelayProxy]]:
    """These settings, with the database reached through a proxy that counts round trips."""
    proxy = DelayProxy(database_target(database_url))
    try:
        url = database_url_via(database_url, proxy.port)
        yield settings.model_copy(update={"database_url": url}), proxy
    finally:
        proxy.close()
