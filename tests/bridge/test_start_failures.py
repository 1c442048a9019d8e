"""`qqbridge run` fails loudly: a taken port, a database it cannot open, tokens missing
or unknown to the homeserver, a registration whose hs_token is wrong each end the run
within seconds, with one line `cannot start: <the problem>` on stderr (where the log
goes) and a non-zero exit status; no traceback, no hang. A homeserver that does not
answer yet is different: the bridge keeps trying, and SIGTERM still ends it at once.

Each case runs the real process; the homeserver, when one is needed, is a stub that
answers whoami and the appservice ping as told (a real Synapse: tests/e2e)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from qqbridge.local.child import free_port
from tests.e2e.harness import write_config

AS_TOKEN, HS_TOKEN = "a" * 32, "h" * 32
NOBODY = "http://127.0.0.1:9"  # nothing listens on the discard port
# Seconds from the start of the process to its exit, imports included: a bridge that
# waited for the homeserver instead would run into `run`'s 30 s timeout. Not 5: with the
# suite on four workers sharing two cores, the interpreter's start alone once took 5.4 s.
FAST = 15.0


def config(tmp_path: Path, *, port: int | None = None, db: str | None = None, homeserver: str = NOBODY,
           **appservice: Any) -> Path:  # fmt: skip
    port = port or free_port("127.0.0.1")
    path = tmp_path / "config.yaml"
    write_config(
        path,
        homeserver={"url": homeserver, "domain": "localhost"},
        appservice={"port": port, "url": f"http://127.0.0.1:{port}", "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
                    **appservice},
        qq={"server_url": "http://127.0.0.1:9/"},
        database={"url": db or f"sqlite:///{tmp_path / 'bridge.db'}"},
        permissions={"@alice:localhost": "admin"},
    )  # fmt: skip
    return path


def run(path: Path, *, fmt: str = "console") -> tuple[int, float, str]:
    """(exit status, seconds to exit, stderr) of `qqbridge run -c path`."""
    env = {**os.environ, "QQBRIDGE_LOGGING__FORMAT": fmt}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "qqbridge", "run", "-c", str(path)], capture_output=True,
                          text=True, timeout=30, env=env)  # fmt: skip
    return done.returncode, time.monotonic() - start, done.stderr


def the_line(stderr: str) -> str:
    """The one line that says why: exactly one, and no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "cannot start:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def fails_fast(path: Path, *needles: str) -> str:
    code, seconds, stderr = run(path)
    assert code == 1, (code, stderr)
    assert seconds < FAST, f"exited after {seconds:.1f} s"
    line = the_line(stderr)
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_taken_port(tmp_path: Path, taken_port: int) -> None:
    fails_fast(config(tmp_path, port=taken_port), f"port 127.0.0.1:{taken_port} is already in use")


def test_a_taken_port_in_json_logs_is_one_json_object(tmp_path: Path, taken_port: int) -> None:
    code, seconds, stderr = run(config(tmp_path, port=taken_port), fmt="json")
    assert code == 1 and seconds < FAST
    event = json.loads(the_line(stderr))
    assert event["level"] == "error" and f"port 127.0.0.1:{taken_port} is already in use" in event["event"]


def test_an_address_not_of_this_machine(tmp_path: Path) -> None:
    fails_fast(config(tmp_path, host="192.0.2.1"), "cannot listen on 192.0.2.1:", "appservice.host")


def test_postgresql_that_does_not_answer(tmp_path: Path) -> None:
    fails_fast(config(tmp_path, db="postgresql://qq:s3cret-pw@127.0.0.1:1/x"), "database:", "127.0.0.1:1")
    code, _, stderr = run(config(tmp_path, db="postgresql://qq:s3cret-pw@127.0.0.1:1/x"))
    assert "s3cret-pw" not in stderr


@pytest.mark.parametrize("where", ["no-such-dir/sub/bridge.db", "a-file/bridge.db", "/proc/qqbridge-not-here/b.db"])
def test_sqlite_where_no_file_can_be(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    path = where if where.startswith("/") else str(tmp_path / where)
    fails_fast(config(tmp_path, db=f"sqlite:///{path}"), "database:", path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any directory")
def test_sqlite_in_a_directory_this_user_cannot_write(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    fails_fast(config(tmp_path, db=f"sqlite:///{locked / 'bridge.db'}"), "database:", str(locked))


def test_the_database_is_checked_before_the_port(tmp_path: Path, taken_port: int) -> None:
    fails_fast(config(tmp_path, port=taken_port, db=f"sqlite:///{tmp_path / 'none' / 'b.db'}"), "database:")


def test_missing_tokens_are_a_bad_config(tmp_path: Path) -> None:
    code, seconds, stderr = run(config(tmp_path, as_token=""))
    assert code == 2 and seconds < FAST and "Traceback" not in stderr
    assert stderr.strip() == stderr.strip().splitlines()[0] and "appservice.as_token: missing" in stderr


# ---- with a homeserver -----------------------------------------------------------------


class Homeserver(ThreadingHTTPServer):
    """Answers whoami and the appservice ping as told; anything else with {}."""

    whoami: tuple[int, dict[str, Any]] = (200, {"user_id": "@qqbridge:localhost"})
    ping: tuple[int, dict[str, Any]] = (200, {"duration_ms": 1})
    pinged = 0


class _Answer(BaseHTTPRequestHandler):
    server: Homeserver

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = 200, {}
        if self.path.startswith("/_matrix/client/v3/account/whoami"):
            status, body = self.server.whoami
        elif "/appservice/" in self.path and self.path.endswith("/ping"):
            self.server.pinged += 1
            status, body = self.server.ping
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def homeserver() -> Iterator[Homeserver]:
    server = Homeserver(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def test_an_as_token_the_homeserver_does_not_know(tmp_path: Path, homeserver: Homeserver) -> None:
    homeserver.whoami = (401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Unrecognised access token"})
    line = fails_fast(config(tmp_path, homeserver=homeserver.url), "does not know the bridge's as_token",
                      "M_UNKNOWN_TOKEN", "registration")  # fmt: skip
    assert AS_TOKEN[:8] not in line


def test_a_registration_for_another_bot(tmp_path: Path, homeserver: Homeserver) -> None:
    homeserver.whoami = (200, {"user_id": "@otherbridge:localhost"})
    fails_fast(config(tmp_path, homeserver=homeserver.url), "@otherbridge:localhost", "@qqbridge:localhost")


def test_a_registration_with_another_hs_token(tmp_path: Path, homeserver: Homeserver) -> None:
    homeserver.ping = (502, {"errcode": "M_BAD_STATUS", "error": "The appservice returned a bad status", "status": 403})
    fails_fast(config(tmp_path, homeserver=homeserver.url), "hs_token differs")
    assert homeserver.pinged == 1


def test_a_homeserver_that_cannot_reach_the_bridge_yet_is_only_logged(tmp_path: Path, homeserver: Homeserver) -> None:
    homeserver.ping = (502, {"errcode": "M_CONNECTION_FAILED", "error": "Connection failed"})
    bridge = subprocess.Popen([sys.executable, "-m", "qqbridge", "run", "-c", str(config(tmp_path,
                              homeserver=homeserver.url))], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("qqbridge ready" in line for line in lines):
            lines.append(bridge.stderr.readline())  # type: ignore[union-attr]
        assert any("qqbridge ready" in line for line in lines), lines
        assert any("cannot reach the bridge yet" in line and "M_CONNECTION_FAILED" in line for line in lines)
    finally:
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(15) == 0
        bridge.stderr.close()  # type: ignore[union-attr]


def test_a_homeserver_not_answering_yet_is_waited_for_and_sigterm_ends_the_wait(tmp_path: Path) -> None:
    bridge = subprocess.Popen([sys.executable, "-m", "qqbridge", "run", "-c", str(config(tmp_path))],
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(4)
        assert bridge.poll() is None, bridge.stderr.read()  # type: ignore[union-attr]
        start = time.monotonic()
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(10) == 0
        assert time.monotonic() - start < 2
        stderr = bridge.stderr.read()  # type: ignore[union-attr]
        assert "the homeserver does not answer yet; the bridge keeps trying" in stderr
        assert "shutting down before the bridge was up" in stderr and "Traceback" not in stderr
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
        bridge.stderr.close()  # type: ignore[union-attr]
