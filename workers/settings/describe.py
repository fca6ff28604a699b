"""How a bad setting or a secret is shown to an operator: one line, passwords masked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from workers.settings.constants import ENV_PREFIX

MASK = "***"
SECRET_PARAMETER = re.compile(r"((?:^|[&;])[^=&;#]*password=)[^&;#]*", re.IGNORECASE)
TOML_POSITION = re.compile(r"^(?P<reason>.*?)\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def describe_toml_error(path: str | Path | None, error: tomllib.TOMLDecodeError) -> str:
    """One line naming the file, line and column of a TOML syntax error, and why."""
    message = " ".join(str(error).split()) or "invalid TOML"
    found = TOML_POSITION.match(message)
    if found is None:
        return f"configuration error: {path}: {message}"
    return (
        f"configuration error: {path} line {found['line']}, column {found['column']}: "
        f"{found['reason']}"
    )


def describe_validation_error(error: ValidationError) -> str:
    """One line: each failing setting named as its environment variable, with the reason."""
    parts = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        name = f"{ENV_PREFIX}{field.upper()}: " if field else ""
        parts.append(f"{name}{message}")
    return "configuration error: " + "; ".join(parts)


def mask_url(url: str) -> str:
    """The URL with any password (user info or query) replaced by `***`, safe to print or log."""
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    head, mark, query = url.partition("?")
    parts = urlsplit(head)
    if parts.password is not None:
        masked = f"{parts.username or ''}:{MASK}@{parts.netloc.rsplit('@', 1)[1]}"
        head = head.replace(parts.netloc, masked, 1)
    return head + mark + SECRET_PARAMETER.sub(rf"\g<1>{MASK}", query)
