"""The demo's config.yaml holds the appservice tokens: it is created 0600 whatever the
umask, and a config.yaml left readable by others (by an older demo) is made 0600 before
the tokens are written into it, so they are never readable by others, not for a moment."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qqbridge.demo import workdir

SETTINGS: dict[str, Any] = {"host": "127.0.0.1", "hs_port": 8008, "bridge_port": 29340, "qq_port": 8000,
                            "time_scale": 1.0}  # fmt: skip


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_new_config_is_0600_whatever_the_umask(tmp_path: Path, umask_0: None) -> None:
    path = workdir.write_config(tmp_path, **SETTINGS)
    assert mode_of(path) == 0o600


def test_an_old_readable_config_is_private_before_the_tokens_go_in(
    tmp_path: Path, umask_0: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"appservice": {"as_token": "a" * 32, "hs_token": "h" * 32}}))
    path.chmod(0o644)
    modes_when_written: list[int] = []
    real_dump = yaml.safe_dump

    def dump(data: Any, *args: Any, **kwargs: Any) -> Any:
        modes_when_written.append(mode_of(path))  # the tokens are about to be written
        return real_dump(data, *args, **kwargs)

    monkeypatch.setattr(workdir.yaml, "safe_dump", dump)
    workdir.write_config(tmp_path, **SETTINGS)
    assert modes_when_written == [0o600] and mode_of(path) == 0o600
    written = yaml.safe_load(path.read_text())["appservice"]
    assert (written["as_token"], written["hs_token"]) == ("a" * 32, "h" * 32)  # the tokens are kept
