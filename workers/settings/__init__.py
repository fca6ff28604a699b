"""Every tunable of a node, as small models: the node's own (`node`), its services'
(`services`), the timings derived from them (`timing`), how they are shown (`describe`), and
the process's identity (`process`). Import from here; the modules are the package's parts."""

from workers.settings.constants import (
    BUILTIN_SERVICES,
    DEFAULT_SERVICE_TIMEOUT,
    ENTRY_POINT_GROUP,
    ENV_PREFIX,
    HANDLER_SPEC,
    NAME_PATTERN,
)
from workers.settings.describe import (
    MASK,
    describe_toml_error,
    describe_validation_error,
    mask_url,
)
from workers.settings.node import Settings, load_settings
from workers.settings.services import (
    HotFolderSettings,
    PlacementSettings,
    ScriptSettings,
    ServiceSettings,
    entry_point_services,
    require_service,
)

__all__ = [
    "BUILTIN_SERVICES",
    "DEFAULT_SERVICE_TIMEOUT",
    "ENTRY_POINT_GROUP",
    "ENV_PREFIX",
    "HANDLER_SPEC",
    "MASK",
    "NAME_PATTERN",
    "HotFolderSettings",
    "PlacementSettings",
    "ScriptSettings",
    "ServiceSettings",
    "Settings",
    "describe_toml_error",
    "describe_validation_error",
    "entry_point_services",
    "load_settings",
    "mask_url",
    "require_service",
]
