"""The wall clock the node's beat reads to place its staggered slots.

Test hook: when `FAILOVER_TEST_WALL_CLOCK_OFFSET_FILE` names a file, the float seconds it
holds are added to `time.time()`, so a test can step one node's wall clock (back or forward)
without libfaketime, whose `DONT_FAKE_MONOTONIC=1` breaks `time.sleep`. The file is re-read
at most every 0.1 s; a missing or unreadable file, or a value that is not finite, means 0.
Nothing but the beat scheduler reads this clock: liveness never depends on it.
"""

from __future__ import annotations

import math
import os
import time

OFFSET_FILE_VARIABLE = "FAILOVER_TEST_WALL_CLOCK_OFFSET_FILE"
REREAD_SECONDS = 0.1


class _Offset:
    """The offset last read, from which file and when (monotonic)."""

    path = ""
    read_at = -math.inf
    seconds = 0.0


def wall_time() -> float:
    """Unix seconds on this host's wall clock, plus the test hook's offset (see the module)."""
    return time.time() + _test_offset()


def _test_offset() -> float:
    path = os.environ.get(OFFSET_FILE_VARIABLE, "")
    if not path:
        return 0.0
    now = time.monotonic()
    if path != _Offset.path or now - _Offset.read_at >= REREAD_SECONDS:
        _Offset.path, _Offset.read_at, _Offset.seconds = path, now, _read_seconds(path)
    return _Offset.seconds


def _read_seconds(path: str) -> float:
    try:
        with open(path) as file:
            seconds = float(file.read().strip() or 0)
    except (OSError, ValueError):
        return 0.0
    return seconds if math.isfinite(seconds) else 0.0
