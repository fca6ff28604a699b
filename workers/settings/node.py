"""A node's settings: one model, from flags, `FAILOVER_*` variables and an optional TOML file.

Precedence: a flag beats the environment, which beats the file, which beats the default.
Timing rules are checked when the settings load (`timing.check_leases`), so a node never
starts with a lease it cannot keep (Patroni checks `loop_wait + 2 * retry_timeout <= ttl`
the same way).
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from workers.decision.decide import Policy
from workers.decision.placement import Placement
from workers.errors import ConfigError
from workers.settings import timing, tls
from workers.settings.constants import (
    BUILTIN_SERVICES,
    ENV_NAME,
    ENV_PREFIX,
    INVALID_NAME,
    NAME_PATTERN,
    SERVICE_NAME_PATTERN,
)
from workers.settings.describe import (
    MASK,
    describe_toml_error,
    describe_validation_error,
    mask_url,
)
from workers.settings.services import (
    HotFolderSettings,
    PlacementSettings,
    ScriptSettings,
    ServiceSettings,
    entry_point_services,
)

_config_file: ContextVar[Path | None] = ContextVar("failover_config_file", default=None)


class Settings(BaseSettings):
    """A node's configuration; the field name is the TOML key, `FAILOVER_<NAME>` its variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    database_url: str | None = Field(default=None, repr=False)
    admin_database_url: str | None = Field(default=None, repr=False)
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    result_backend: str | None = Field(default=None, repr=False)
    sentinel_master: str | None = None
    task_events: bool = False

    node_name: str | None = None
    region: str = "default"
    ip_address: str | None = None
    port_number: str | None = None
    app_context: str = ""
    health_timeout: float = Field(default=0.5, gt=0)

    heartbeat_interval: float = Field(default=1.0, gt=0)
    lease_timeout: float = Field(default=3.0, gt=0)
    database_timeout: float = Field(default=0.5, gt=0)
    cross_region_delay: float = Field(default=1.0, ge=0)
    fence_margin: float = Field(default=0.2, ge=0)
    handover_grace: float = Field(default=30.0, ge=0)

    placement: dict[str, PlacementSettings] = {}
    region_lease_timeout: dict[str, float] = {}

    node_retention_days: float = Field(default=7.0, gt=0)
    ledger_retention_days: float = Field(default=30.0, gt=0)
    pool: str = "threads"
    concurrency: int = Field(default=6, ge=4)
    log_level: str = "INFO"
    hot_folder: str | None = None
    hot_folders: list[HotFolderSettings] = []
    folder_parallelism: int = Field(default=2, ge=1)
    folder_batch_size: int = Field(default=100, ge=1)
    folder_dispatch: str = "owner"
    scripts: dict[str, ScriptSettings] = {}
    script_output_lines: int = Field(default=20, ge=1)
    child_env_passthrough: list[str] = []
    services: dict[str, ServiceSettings] = {}
    web_user: str | None = None
    web_password: str | None = Field(default=None, repr=False)
    web_token: str | None = Field(default=None, repr=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("node_name", "region")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError(INVALID_NAME.format(value))
        return value

    @field_validator("database_url", "admin_database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0]
        if scheme in ("postgresql", "postgres"):
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        elif scheme != "postgresql+psycopg":
            raise ValueError("must start with postgresql+psycopg:// (or postgresql://)")
        _check_tls_files(value, tls.DATABASE_FILES)
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        schemes = {"redis", "rediss", "redis+socket", "sentinel", "sentinels"}
        for part in value.split(";"):
            if part.split("://", 1)[0] not in schemes:
                raise ValueError(f"scheme must be one of {', '.join(sorted(schemes))}")
        _check_tls_files(value, tls.BROKER_FILES)
        return value

    @field_validator("result_backend")
    @classmethod
    def _check_result_backend(cls, value: str | None) -> str | None:
        if value is not None:
            _check_tls_files(value, tls.BROKER_FILES)
        return value

    @model_validator(mode="after")
    def _check_sentinel(self) -> Settings:
        if self.broker_url.startswith("sentinel") and not self.sentinel_master:
            raise ValueError(f"{ENV_PREFIX}SENTINEL_MASTER is required with a sentinel:// broker")
        return self

    @field_validator("scripts")
    @classmethod
    def _check_script_names(cls, value: dict[str, ScriptSettings]) -> dict[str, ScriptSettings]:
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"script name {name!r}: lowercase letters, digits, '_', '.', '-'")
        return value

    @field_validator("child_env_passthrough")
    @classmethod
    def _check_passthrough(cls, value: list[str]) -> list[str]:
        for name in value:
            if name.upper().startswith(ENV_PREFIX):
                raise ValueError(f"{name}: {ENV_PREFIX}* variables never reach a child process")
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("folder_dispatch")
    @classmethod
    def _check_dispatch(cls, value: str) -> str:
        if value not in ("owner", "shared"):
            raise ValueError("must be owner (handlers run on the owner) or shared")
        return value

    @model_validator(mode="after")
    def _check_capacity(self) -> Settings:
        """Leave pool slots for the heartbeat, the service work and a script beside handlers."""
        if self.folder_parallelism + 3 > self.concurrency:
            raise ValueError(
                f"{ENV_PREFIX}CONCURRENCY ({self.concurrency}) must be at least "
                f"{ENV_PREFIX}FOLDER_PARALLELISM ({self.folder_parallelism}) + 3, so that "
                "heartbeats, service work and scripts always find a free worker"
            )
        return self

    def folders(self) -> list[HotFolderSettings]:
        """The hot folders: `hot_folders`, plus `FAILOVER_HOT_FOLDER` as one named `default`."""
        shorthand = []
        if self.hot_folder:
            shorthand = [
                HotFolderSettings(
                    name="default",
                    path=Path(self.hot_folder),
                    handler="workers.services.folder_monitor:accept",
                )
            ]
        return [*self.hot_folders, *shorthand]

    def script(self, name: str) -> ScriptSettings:
        """An allow-listed script by name, or a usage error (exit 2)."""
        if name not in self.scripts:
            known = ", ".join(sorted(self.scripts)) or "none configured"
            raise ConfigError(f"unknown script {name!r} (known: {known})")
        return self.scripts[name]

    @field_validator("pool")
    @classmethod
    def _check_pool(cls, value: str) -> str:
        if value not in ("prefork", "threads", "solo"):
            raise ValueError("must be prefork, threads or solo")
        return value

    @field_validator("services")
    @classmethod
    def _check_service_names(cls, value: dict[str, ServiceSettings]) -> dict[str, ServiceSettings]:
        for name in value:
            if name in BUILTIN_SERVICES:
                raise ValueError(f"{name!r} is a built-in service: choose another name")
            if not SERVICE_NAME_PATTERN.match(name):
                raise ValueError(
                    f"service name {name!r}: lowercase snake_case, such as nightly_sync"
                )
        return value

    @model_validator(mode="after")
    def _check_placements(self) -> Settings:
        """A placement names a service this configuration declares (built-in, TOML, entry point)."""
        unknown = set(self.placement) - set(BUILTIN_SERVICES) - set(self.services)
        if unknown:
            unknown -= set(entry_point_services())
        if unknown:
            raise ValueError(
                f"{ENV_PREFIX}PLACEMENT: unknown service {', '.join(sorted(unknown))} "
                f"(known: {', '.join(self.service_names())})"
            )
        return self

    def service_names(self) -> list[str]:
        """Every service this node's configuration declares: the built-ins first."""
        custom = sorted(set(self.services) | set(entry_point_services()))
        return [*BUILTIN_SERVICES, *(name for name in custom if name not in BUILTIN_SERVICES)]

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        """Every lease must outlast one late heartbeat plus two slow database round trips."""
        timing.check_leases(self)
        return self

    def node_lease_timeout(self) -> float:
        """This node's lease: its region's threshold if one is set (long database round trips)."""
        return timing.node_lease(self)

    def longest_lease(self) -> float:
        """The longest lease any node of the cluster may hold (a far region's, if longer)."""
        return timing.longest_lease(self)

    def policy(self) -> Policy:
        """The pure decision's view of these settings."""
        placements = {
            service: Placement(
                preferred_nodes=tuple(p.preferred_nodes),
                preferred_regions=tuple(p.preferred_regions),
                failback=p.failback,
                failback_dwell=p.failback_dwell,
                failback_window=p.window(),
            )
            for service, p in self.placement.items()
        }
        return Policy(self.cross_region_delay, placements)

    def require_database_url(self) -> str:
        """The database URL, or a configuration error naming the variable to set."""
        if not self.database_url:
            raise ConfigError(f"{ENV_PREFIX}DATABASE_URL is not set (postgresql+psycopg://...)")
        return self.database_url

    def require_node(self) -> tuple[str, str]:
        """The node's name and region, or a configuration error naming what is missing."""
        if not self.node_name:
            raise ConfigError(f"{ENV_PREFIX}NODE_NAME is not set (or pass --node)")
        return self.node_name, self.region

    def describe(self) -> dict[str, Any]:
        """The settings as an operator may see them: URL passwords and script env values masked."""
        shown = self.model_dump()
        for key in ("database_url", "admin_database_url", "broker_url", "result_backend"):
            if shown[key]:
                shown[key] = mask_url(shown[key])
        for script in shown["scripts"].values():
            script["env"] = {name: MASK for name in script["env"]}
        for key in ("web_password", "web_token"):
            shown[key] = MASK if shown[key] else None
        return shown


def load_settings(config_file: str | Path | None = None, **flags: Any) -> Settings:
    """Load and validate the settings; raise `ConfigError` with one line naming each bad one."""
    path = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG") or None
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"{ENV_PREFIX}CONFIG: no such file: {path}")
    token = _config_file.set(Path(path) if path else None)
    try:
        return Settings(**{key: value for key, value in flags.items() if value is not None})
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(describe_toml_error(path, error)) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"configuration error: {path}: not UTF-8 text (byte {error.start})"
        ) from None
    except OSError as error:
        raise ConfigError(f"configuration error: {path}: {error.strerror or error}") from None
    finally:
        _config_file.reset(token)


def _check_tls_files(url: str, parameters: tuple[str, ...]) -> None:
    """Refuse a URL whose TLS files (CA, certificate, key) cannot be read: a connection would
    fail on every try, so the node must not start and wait for it."""
    problems = tls.file_problems(url, parameters)
    if problems:
        raise ValueError("; ".join(problems))
