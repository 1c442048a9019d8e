"""The architecture is kept by tools, not by hope: import-linter's contracts in
pyproject.toml (layers from the command line down to config and logging, the
simulator independent of the client, the codec free of I/O, no import circles between
the parts of the bridge) and mypy, strict for the bridge, the store and the QQ client
([tool.mypy]), hold for the code as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_types_check_strictly() -> None:
    mypy = Path(sys.executable).with_name("mypy")
    done = subprocess.run([str(mypy), "--no-incremental"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout
