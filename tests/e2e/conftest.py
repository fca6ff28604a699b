"""End-to-end tests leave nothing running behind them, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest


@pytest.fixture(autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    yield
    children = psutil.Process().children(recursive=True)
    workers = [child.pid for child in children if child.is_running() and child.status() != "zombie"]
    assert not workers, f"processes left running: {workers}"
