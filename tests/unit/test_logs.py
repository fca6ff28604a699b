"""A node's log lines name the node once, added in one place (`workers.runtime.logs`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from workers.runtime import logs
from workers.settings.process import NODE_VAR


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    monkeypatch.setenv(NODE_VAR, "eu-1")
    logs.name_the_node()
    logs.name_the_node()
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)


def message(logger: str) -> str:
    return (
        logging.getLogger(logger)
        .makeRecord(logger, logging.INFO, "f", 1, "took %s", ("x",), None)
        .getMessage()
    )


def test_the_product_s_lines_name_the_node_once(named: None) -> None:
    assert message("workers.runtime.tasks") == "node eu-1: took x"
    assert message("beat_schedule.scheduler") == "node eu-1: took x"


def test_celery_s_own_lines_are_left_as_they_are(named: None) -> None:
    assert message("celery.worker") == "took x"


def test_a_process_that_serves_no_node_adds_nothing(
    named: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(NODE_VAR)
    assert message("workers.operations.cli") == "took x"
