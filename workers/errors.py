"""The one exception hierarchy of celery-failover: the CLI maps each kind to an exit code."""


class FailoverError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(FailoverError):
    """A setting is missing or wrong: the operator must fix the configuration (exit 2)."""

    exit_code = 2


class DatabaseUnavailable(FailoverError):
    """The database cannot be reached, so no decision can be made (exit 2 in the CLI)."""

    exit_code = 2


class Refused(FailoverError):
    """The cluster refused the operation for a stated reason (exit 1)."""

    exit_code = 1


class StaleEpoch(FailoverError):
    """A service side effect was fenced off: this node no longer owns the service at that epoch."""

    exit_code = 1
    counted = False


class HandingOver(StaleEpoch):
    """New work refused because its service is handing over (a planned move or stop): not a
    stale owner, so not counted as a rejected side effect."""

    counted = True
