"""Who this process is: its settings, loaded once, and the node and incarnation it serves.

The bottom of the node: the beat, the tasks and the commands all ask here, so none of them
needs the Celery runtime to learn whom it acts for.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import cache

from workers.errors import ConfigError
from workers.settings.constants import ENV_PREFIX
from workers.settings.node import Settings, load_settings

INCARNATION_VAR = f"{ENV_PREFIX}INCARNATION"
NODE_VAR = f"{ENV_PREFIX}NODE_NAME"


@dataclass(frozen=True)
class Identity:
    """Who is acting: the node's name and the incarnation of the running process."""

    name: str
    incarnation: str


def new_incarnation() -> str:
    """A name for one run of a node's worker, new at every start."""
    return str(uuid.uuid4())


@cache
def current_settings() -> Settings:
    """This process's settings (environment and `FAILOVER_CONFIG`), loaded once."""
    return load_settings()


def current_identity() -> Identity:
    """The node this process serves and the incarnation of its worker."""
    name, _region = current_settings().require_node()
    incarnation = os.environ.get(INCARNATION_VAR)
    if not incarnation:
        raise ConfigError(f"{INCARNATION_VAR} is not set: this process was not started as a node")
    return Identity(name, incarnation)


def adopt_node(name: str, incarnation: str | None = None) -> Identity:
    """Make this process (and the pool children it will fork) serve node `name`."""
    os.environ[NODE_VAR] = name
    os.environ[INCARNATION_VAR] = incarnation or new_incarnation()
    current_settings.cache_clear()
    return current_identity()
