"""One way to wait for something to become true, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    timeout: float,
    what: str,
    every: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy, and return that; errors in `ignoring`
    count as not yet. After `timeout` s, raise TimeoutError naming `what`, with `explain()`."""
    deadline = time.monotonic() + timeout
    while True:
        with suppress(*ignoring):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            said = explain() if explain else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{said}")
        time.sleep(every)
