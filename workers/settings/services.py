"""The services' own settings: placement policies, hot folders, scripts, custom services."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import time
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

from workers.errors import ConfigError
from workers.settings.constants import (
    BUILTIN_SERVICES,
    DEFAULT_SERVICE_TIMEOUT,
    ENTRY_POINT_GROUP,
    HANDLER_SPEC,
    INVALID_NAME,
    NAME_PATTERN,
    WINDOW_PATTERN,
)


class PlacementSettings(BaseModel):
    """A service's placement policy, as written in the `[placement.<service>]` TOML table."""

    model_config = {"extra": "forbid", "frozen": True}

    preferred_nodes: list[str] = []
    preferred_regions: list[str] = []
    failback: bool = False
    failback_dwell: float = Field(default=30.0, ge=0)
    failback_window: str | None = None

    @field_validator("failback_window")
    @classmethod
    def _check_window(cls, value: str | None) -> str | None:
        if value is not None and not WINDOW_PATTERN.match(value):
            raise ValueError("must be HH:MM-HH:MM (UTC, database clock), such as 01:00-05:00")
        return value

    def window(self) -> tuple[time, time] | None:
        if self.failback_window is None:
            return None
        start, end = self.failback_window.split("-")
        return time.fromisoformat(start), time.fromisoformat(end)


class HotFolderSettings(BaseModel):
    """One hot folder of the folder monitor: `[[hot_folders]]` in the TOML file."""

    model_config = {"extra": "forbid", "frozen": True}

    name: str
    path: Path
    patterns: list[str] = ["*"]
    ignore: list[str] = ["*.tmp", "*.part", ".*"]
    handler: str | None = None
    command: list[str] | None = None
    processed_dir: Path | None = None
    failed_dir: Path | None = None
    settle_seconds: float = Field(default=2.0, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff: float = Field(default=1.0, ge=0)
    handler_timeout: float = Field(default=300.0, gt=0)

    @field_validator("name")
    @classmethod
    def _check_folder_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(INVALID_NAME.format(value))
        return value

    @field_validator("handler")
    @classmethod
    def _check_handler(cls, value: str | None) -> str | None:
        if value is not None and not HANDLER_SPEC.match(value):
            raise ValueError("must be package.module:function")
        return value

    @model_validator(mode="after")
    def _one_handler(self) -> HotFolderSettings:
        if (self.handler is None) == (self.command is None):
            raise ValueError(f"hot folder {self.name}: set exactly one of handler or command")
        if self.command is not None and not self.command:
            raise ValueError(f"hot folder {self.name}: command must name a program")
        return self

    @property
    def processed(self) -> Path:
        return self.processed_dir or self.path / "processed"

    @property
    def failed(self) -> Path:
        return self.failed_dir or self.path / "failed"

    @property
    def processing(self) -> Path:
        return self.path / ".processing"


class ScriptSettings(BaseModel):
    """One allow-listed application script: `[scripts.<name>]` in the TOML file."""

    model_config = {"extra": "forbid", "frozen": True}

    argv: list[str]
    cwd: Path | None = None
    env: dict[str, str] = {}
    timeout: float = Field(default=300.0, gt=0)
    interval: float | None = Field(default=None, gt=0)
    cron: str | None = None

    @field_validator("argv")
    @classmethod
    def _check_argv(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name a program")
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> ScriptSettings:
        if self.interval is not None and self.cron is not None:
            raise ValueError("set interval or cron, not both")
        return self


class ServiceSettings(BaseModel):
    """A team's own singleton service: `[services.<name>]` in the TOML file."""

    model_config = {"extra": "forbid", "frozen": True}

    handler: str | None = None
    interval: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=DEFAULT_SERVICE_TIMEOUT, gt=0)

    @field_validator("handler")
    @classmethod
    def _check_handler(cls, value: str | None) -> str | None:
        if value is not None and not HANDLER_SPEC.match(value):
            raise ValueError(f"{value!r} must be package.module:function")
        return value


def entry_point_services() -> dict[str, str]:
    """The services installed packages declare in `celery_failover.services`: name -> spec."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def require_service(service: str, known: Iterable[str] = BUILTIN_SERVICES) -> None:
    """A usage error unless `service` is one of `known` (the services with a row in the
    database, which is the truth: a custom service another node declared counts)."""
    names = sorted(known)
    if service not in names:
        raise ConfigError(f"unknown service {service!r}: use one of {', '.join(names)}")
