"""Logs: one JSON object per line for services, and no secret in them whatever the key."""

from __future__ import annotations

import json
import subprocess
import sys


def test_json_logs_mask_secrets() -> None:
    script = (
        "import structlog; from qqbridge import log; log.configure('json', 'INFO');"
        "structlog.get_logger('t').info('login', uin=10001, password_md5='ABCDEF', as_token='tok', note='fine')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["event"] == "login" and line["uin"] == 10001 and line["note"] == "fine"
    assert line["password_md5"] == "***" and line["as_token"] == "***"
    assert "ABCDEF" not in done.stderr and "tok'" not in done.stderr and line["level"] == "info"
