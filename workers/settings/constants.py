"""Names and patterns every part of the settings shares: the variable prefix, what a name may be."""

from __future__ import annotations

import re

ENV_PREFIX = "FAILOVER_"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
BUILTIN_SERVICES = ("folder_monitor", "app_script")
SERVICE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
HANDLER_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ENTRY_POINT_GROUP = "celery_failover.services"
DEFAULT_SERVICE_TIMEOUT = 60.0
"""Seconds a custom service's handler may run before it is cut (`[services.<name>] timeout`)."""

WINDOW_PATTERN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INVALID_NAME = "{!r} is not a valid name (lowercase letters, digits, '_', '.', '-')"
