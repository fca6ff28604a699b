"""Imported at start by a node whose PYTHONPATH holds this folder (the test's fault, not the
product's): once the file named by FAILOVER_TEST_BEAT_SLEEP_FAILS exists, `time.sleep`
raises OSError(EINVAL) in the beat thread, as it does under libfaketime with
DONT_FAKE_MONOTONIC=1 (the incident that left a node running without its beat)."""

from __future__ import annotations

import errno
import os
import threading
import time

_sleep = time.sleep


def _sleep_unless_broken(seconds: float) -> None:
    trigger = os.environ.get("FAILOVER_TEST_BEAT_SLEEP_FAILS", "")
    if trigger and threading.current_thread().name == "Beat" and os.path.exists(trigger):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    _sleep(seconds)


time.sleep = _sleep_unless_broken
