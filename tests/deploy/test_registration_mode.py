"""The Docker deploy's registration is written by the bridge (its image's user) and read
by Synapse, whose image runs as another uid (991): deploy/docker/README.md must have
generate-registration write it readable by others (`--mode 0644`), or Synapse cannot
start. The bridge's config stays private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from qqbridge.registration import generate
from tests.deploy.helpers import DOCKER, example_config, fenced_shell_lines, parse_cli, qqbridge_invocations


def readme_registrations() -> list[object]:
    readme = DOCKER / "README.md"
    return [
        parse_cli(argv, str(readme))
        for line in fenced_shell_lines(readme)
        for argv in qqbridge_invocations(line)
        if argv[0] == "generate-registration"
    ]


def test_the_readme_writes_a_registration_synapse_can_read() -> None:
    registrations = readme_registrations()
    assert registrations, "deploy/docker/README.md never runs generate-registration"
    for args in registrations:
        assert args.mode is not None and args.mode & 0o004, (
            "Synapse (uid 991) reads the registration the bridge (uid 10001) writes: pass --mode 0644"
        )


def test_that_mode_is_what_the_files_get(tmp_path: Path) -> None:
    (args,) = readme_registrations()
    config = example_config(tmp_path)
    registration = tmp_path / "registration.yaml"
    generate(config, registration, mode=args.mode)
    assert stat.S_IMODE(os.stat(registration).st_mode) == args.mode
    assert stat.S_IMODE(os.stat(config).st_mode) & 0o007 == 0  # the config, with the same tokens, stays private
    # regenerating with the same command keeps it readable
    generate(config, registration, mode=args.mode)
    assert stat.S_IMODE(os.stat(registration).st_mode) == args.mode
