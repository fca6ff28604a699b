"""How a node's log lines read: each of the product's lines names the node, added here once;
Celery's routine lines (a line per task) stay quiet unless the node logs at DEBUG.

Levels: WARNING is for what an operator should look at (a takeover, an expiry, a refused
side effect, a killed child, a lease at risk); starts, stops, moves and routine runs are INFO.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from workers.settings.process import NODE_VAR

PRODUCT_LOGGERS = ("workers.", "beat_schedule.")
ROUTINE_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


def name_the_node() -> None:
    """Prefix every record of the product's loggers with `node <name>: ` while this process
    serves a node (`FAILOVER_NODE_NAME`); once per process, whoever calls it first."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "names_the_node", False):
        return

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = previous(*args, **kwargs)
        node = os.environ.get(NODE_VAR)
        if node and made.name.startswith(PRODUCT_LOGGERS) and isinstance(made.msg, str):
            made.msg = f"node {node}: {made.msg}"
        return made

    record.names_the_node = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record)


def quiet_routine_logs(loglevel: int | str | None = None, **_: Any) -> None:
    """Celery logs a line per task received and succeeded: noise below DEBUG."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if isinstance(level, int) and level > logging.DEBUG:
        for name in ROUTINE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
