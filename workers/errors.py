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


class BrokerUnavailable(FailoverError):
    """A command that must send a message now cannot reach the broker (exit 2)."""

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


def first_line(error: BaseException) -> str:
    """An error's first line, for a one-line message; its type when it says nothing."""
    said = str(error).strip()
    return said.splitlines()[0] if said else type(error).__name__
