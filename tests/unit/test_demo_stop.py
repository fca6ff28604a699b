"""`failover demo` stopped by a signal exits 130, whatever the interrupted call raised over
the interrupt while cleaning up (a database ping cut mid-query raises ProgrammingError)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from workers.testing import demo


@pytest.fixture
def handlers_restored() -> Iterator[None]:
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)


def stopped_while_cleaning_up(_self: demo.Demo) -> demo.Story:
    try:
        os.kill(os.getpid(), signal.SIGHUP)
    finally:
        raise RuntimeError("a cleanup that raised over the interrupt")


def test_a_signal_stops_the_demo_even_when_cleanup_raises_over_it(
    monkeypatch: pytest.MonkeyPatch, handlers_restored: None
) -> None:
    monkeypatch.setattr(demo.Demo, "run", stopped_while_cleaning_up)
    with pytest.raises(SystemExit) as exited:
        demo.demo.main(["--headless"], standalone_mode=False)
    assert exited.value.code == 130


def test_an_error_without_a_signal_is_not_taken_for_a_stop(
    monkeypatch: pytest.MonkeyPatch, handlers_restored: None
) -> None:
    def fails(_self: demo.Demo) -> demo.Story:
        raise RuntimeError("a real failure")

    monkeypatch.setattr(demo.Demo, "run", fails)
    with pytest.raises(RuntimeError, match="a real failure"):
        demo.demo.main(["--headless"], standalone_mode=False)
