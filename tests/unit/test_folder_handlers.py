"""How a hot folder's handler is named: the default one where the folder monitor lives now,
and the name configuration files gave it before it moved, which still works."""

from __future__ import annotations

import textwrap

import pytest

from workers.errors import ConfigError
from workers.services import folder_monitor
from workers.services.folder_monitor.handler import DEFAULT_HANDLER, accept, load_handler
from workers.settings import load_settings

OLD_NAME = "workers.folder_monitor:accept"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("FAILOVER_"):
            monkeypatch.delenv(key)


def test_the_default_handler_is_named_where_the_folder_monitor_lives(tmp_path):
    settings = load_settings(hot_folder=str(tmp_path))
    (folder,) = settings.folders()
    assert folder.handler == DEFAULT_HANDLER == "workers.services.folder_monitor:accept"
    assert load_handler(folder.handler) is accept is folder_monitor.accept


def test_the_name_a_config_file_gave_the_default_handler_before_the_move_still_works(tmp_path):
    # Given a configuration file written before the move, naming the old module
    (tmp_path / "inbox").mkdir()
    config = tmp_path / "failover.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[hot_folders]]
            name = "inbox"
            path = "{tmp_path / "inbox"}"
            handler = "{OLD_NAME}"
            """
        )
    )
    settings = load_settings(config)
    # When the node checks its folders at start and loads the handler
    folder_monitor.check_folders(settings)
    # Then the old name resolves to the default handler, and no other old name does
    assert load_handler(OLD_NAME) is accept
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_handler("workers.folder_monitor:scan")
