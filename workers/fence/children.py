"""What a child process (a script, a folder's `command` handler) finds in its environment.

A node's environment holds its database and broker URLs, passwords included; a child gets
only a small allow-list of it, the names an operator passes through on purpose, and its own
configured `env`. No `FAILOVER_*` variable of the node ever reaches a child.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from workers.settings import ENV_PREFIX

ALLOWED = frozenset(
    ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SHELL", "TERM")
)
ALLOWED_PREFIXES = ("LC_",)


def child_environment(extra: Mapping[str, str], passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The allow-listed and passed-through variables of this process, then `extra` on top."""
    wanted = set(passthrough)
    inherited = {
        name: value
        for name, value in os.environ.items()
        if _inheritable(name, wanted) and not name.upper().startswith(ENV_PREFIX)
    }
    return {**inherited, **extra}


def _inheritable(name: str, passthrough: set[str]) -> bool:
    return name in ALLOWED or name.startswith(ALLOWED_PREFIXES) or name in passthrough
