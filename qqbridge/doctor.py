"""`qqbridge doctor` (and the admin command `doctor`): checks what users most often get
wrong, each finding with how to fix it.

    tokens        the config has its appservice tokens (`generate-registration` was run)
    registration  the registration file exists, and its tokens, URL and namespaces match
                  the config
    homeserver    the bridge reaches the homeserver at homeserver.url
    as_token      the homeserver knows the bridge's as_token (it loaded this registration)
    appservice    the homeserver reaches the bridge (the homeserver's appservice ping)
    qq server     the QQ server answers the QQ HTTP protocol 1.1
    database      the database exists, and at which schema version (or that `run` will
                  create or migrate it)
    permissions   someone is allowed in

It is usable at every stage of a setup, from a config just copied from the example on,
and it changes nothing: the database is looked at read-only, never created nor
migrated, and no file is written. A finding is a problem (✘, with its fix), fine (✔) or
information (ℹ: what `qqbridge run` will do, not a problem).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from qqbridge.config import Config, describe_yaml_error
from qqbridge.qq import QQClient, errors

SAMPLE_UIN = 10000  # a legal QQ number; Logout for it changes nothing anywhere
MIN_TOKEN_LENGTH = 16  # what `load_config` requires of as_token and hs_token


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""
    info: bool = False  # not a problem: what `qqbridge run` will do (create, migrate)

    def line(self) -> str:
        mark = "✘" if not self.ok else "ℹ" if self.info else "✔"
        text = f"{mark} {self.check}: {self.detail}"
        return text + (f"\n    fix: {self.fix}" if self.fix and not self.ok else "")


def has_tokens(config: Config) -> bool:
    """Whether the config has usable appservice tokens (`load_config` requires them)."""
    return all(len(getattr(config.appservice, key)) >= MIN_TOKEN_LENGTH for key in ("as_token", "hs_token"))


def generate_command(config_path: Path | str, registration: Path | str) -> str:
    return f"`qqbridge generate-registration -c {config_path} -o {registration}`"


def check_tokens(config: Config, config_path: Path | str, registration: Path | str) -> Finding:
    if has_tokens(config):
        return Finding("tokens", True, "the config has its as_token and hs_token")
    missing = [key for key in ("as_token", "hs_token") if len(getattr(config.appservice, key)) < MIN_TOKEN_LENGTH]
    return Finding("tokens", False, f"appservice.{' and appservice.'.join(missing)} in {config_path} "
                   f"{'are' if len(missing) > 1 else 'is'} not set yet (or too short)",
                   f"run {generate_command(config_path, registration)}; it writes the tokens into both files, "
                   "then give the registration to the homeserver and restart it")  # fmt: skip


def check_registration(config: Config, path: Path) -> list[Finding]:
    # PyYAML's own message quotes the offending line, which may hold a token: only
    # where and what the error is goes into the finding.
    regenerate = "run `qqbridge generate-registration -c CONFIG -o REGISTRATION`"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [Finding("registration", False, f"cannot read {path}: {exc.strerror or type(exc).__name__}", regenerate)]
    except UnicodeDecodeError as exc:
        return [Finding("registration", False, f"{path} is not UTF-8 text (byte {exc.start})", regenerate)]
    try:
        registration = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [Finding("registration", False, f"{path} is not valid YAML: {describe_yaml_error(exc, text)}",
                        regenerate)]  # fmt: skip
    except RecursionError:
        return [Finding("registration", False, f"{path} is not valid YAML: nested too deeply", regenerate)]
    if not isinstance(registration, dict):
        return [Finding("registration", False, f"{path} is not a registration", "generate it again")]
    findings = []
    regen = (f"run `qqbridge generate-registration` again (it writes both files), give {path} to the "
             "homeserver and restart it")  # fmt: skip
    for key in ("as_token", "hs_token"):
        if registration.get(key) != getattr(config.appservice, key):
            findings.append(Finding("registration", False, f"{key} in {path} differs from the config's", regen))
    if registration.get("url") != config.appservice.url:
        findings.append(Finding("registration", False, f"url {registration.get('url')!r} in {path} is not the "
                                f"config's appservice.url {config.appservice.url!r}", regen))  # fmt: skip
    users = (registration.get("namespaces") or {}).get("users") or []
    regexes = [ns.get("regex", "") for ns in users if isinstance(ns, dict)]
    for mxid in (config.bot_mxid, config.puppet_mxid(SAMPLE_UIN)):
        if not any(re.fullmatch(regex, mxid) for regex in regexes if isinstance(regex, str)):
            findings.append(Finding("registration", False, f"no user namespace covers {mxid} (wrong domain?)", regen))
    return findings or [Finding("registration", True, f"{path} matches the config")]


async def check_homeserver(config: Config, *, tokens: bool = True) -> list[Finding]:
    base, token = config.homeserver.url, config.appservice.as_token
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            await http.get(f"{base}/_matrix/client/versions")
        except httpx.HTTPError as exc:
            return [Finding("homeserver", False, f"the bridge cannot reach {base}: {exc or type(exc).__name__}",
                            "check homeserver.url: the address the bridge uses for the homeserver's client API")]
        findings = [Finding("homeserver", True, f"{base} answers")]
        if not tokens:  # said by the tokens finding; the homeserver cannot know an empty token
            return findings
        auth = {"Authorization": f"Bearer {token}"}
        whoami = await http.get(f"{base}/_matrix/client/v3/account/whoami", headers=auth)
        if whoami.status_code != 200:
            findings.append(Finding("as_token", False, f"the homeserver refuses the bridge's as_token "
                                    f"({_errcode(whoami)}): it has not loaded this bridge's registration",
                                    "give the homeserver the registration made with this config "
                                    "(app_service_config_files in Synapse) and restart it"))  # fmt: skip
            return findings
        findings.append(Finding("as_token", True, f"the homeserver knows the bridge as {whoami.json().get('user_id')}"))
        ping = await http.post(
            f"{base}/_matrix/client/v1/appservice/{config.appservice.id}/ping",
            json={"transaction_id": f"doctor-{secrets.token_hex(4)}"}, headers=auth,
        )  # fmt: skip
        findings.append(_ping_finding(config, ping))
    return findings


def _errcode(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = {}
    return f"HTTP {response.status_code} {body.get('errcode', '')}".strip()


def _ping_finding(config: Config, ping: httpx.Response) -> Finding:
    url = config.appservice.url
    if ping.status_code == 200:
        return Finding("appservice", True, f"the homeserver reaches the bridge at {url} "
                       f"({ping.json().get('duration_ms', '?')} ms)")  # fmt: skip
    code = _errcode(ping)
    if "M_CONNECTION" in code:
        return Finding("appservice", False, f"the homeserver cannot reach the bridge at {url} ({code})",
                       "is `qqbridge run` running? appservice.url must be reachable from the homeserver, and "
                       "appservice.host/port must listen there (0.0.0.0 in a container)")  # fmt: skip
    if "M_BAD_STATUS" in code:
        return Finding("appservice", False, f"the bridge refused the homeserver's call ({code}): the homeserver's "
                       "hs_token differs from the config's", "regenerate the registration and restart the homeserver")
    if "M_URL_NOT_SET" in code:
        return Finding("appservice", False, "the registration the homeserver loaded has no url",
                       "set url in the registration to appservice.url and restart the homeserver")  # fmt: skip
    return Finding("appservice", False, f"the appservice ping failed ({code})",
                   "the homeserver may predate the ping (Matrix 1.7); check its log for transactions to the bridge")


async def check_qq(config: Config) -> Finding:
    url = config.qq.server_url
    async with QQClient(url, SAMPLE_UIN, local_address=config.qq.local_address, timeout=10) as client:
        try:
            await client.logout()
        except errors.ServerUnavailable as exc:
            return Finding("qq server", False, str(exc), "check qq.server_url, and that the QQ server runs")
        except errors.QQError as exc:
            return Finding("qq server", False, f"{url} answers, but not as the QQ HTTP protocol 1.1: {exc}",
                           "qq.server_url must point at a QQ HTTP protocol 1.1 server")  # fmt: skip
    return Finding("qq server", True, f"{url} speaks the QQ HTTP protocol 1.1")


async def check_database(config: Config, store: Any = None) -> Finding:
    """What the database is, changing nothing: never created, never migrated, no write.

    With the running bridge's `store` (the control room's `doctor`): that it answers.
    Otherwise the database is looked at read-only (`qqbridge.store.inspect`)."""
    from qqbridge.store import LATEST_VERSION, StoreError
    from qqbridge.store.database import redact_url
    from qqbridge.store.inspect import inspect
    from qqbridge.store.migrations import schema_version

    where = redact_url(config.database.url)
    fix = "database.url must name a database the bridge's user can create and write"
    if store is not None:
        try:
            version = await schema_version(store.db)
        except Exception as exc:  # any failure here is the finding
            return Finding("database", False, f"{where}: {exc}", "check the database server and the bridge's log")
        return Finding("database", True, f"{where} answers (schema version {version})")
    try:
        state = await inspect(config.database.url)
    except StoreError as exc:
        return Finding("database", False, f"{where}: {exc}", fix)
    if state.unwritable is not None:
        return Finding("database", False, f"{where}: {state.unwritable}", fix)
    if not state.exists:
        at = f" ({state.path})" if state.path is not None and not where.endswith(str(state.path)) else ""
        return Finding("database", True, f"{where}{at} does not exist yet; `qqbridge run` creates it", info=True)
    if state.version > LATEST_VERSION:
        return Finding("database", False, f"{where}: schema version {state.version} is newer than this qqbridge "
                       f"(knows up to {LATEST_VERSION})", "upgrade qqbridge")  # fmt: skip
    if state.version == 0:
        return Finding("database", True, f"{where} is empty; `qqbridge run` creates the schema "
                       f"(version {LATEST_VERSION})", info=True)  # fmt: skip
    if state.version < LATEST_VERSION:
        return Finding("database", True, f"{where}: schema version {state.version}; `qqbridge run` will migrate it "
                       f"to version {LATEST_VERSION}", info=True)  # fmt: skip
    return Finding("database", True, f"{where} opens; schema version {state.version} (current)")


def check_permissions(config: Config) -> Finding:
    if not config.permissions:
        return Finding("permissions", False, "nobody may use the bridge: `permissions` is empty",
                       f'add e.g. "{config.homeserver.domain}": user and "@you:{config.homeserver.domain}": admin')
    admins = [who for who, level in config.permissions.items() if level == "admin"]
    detail = f"{len(config.permissions)} rule(s)" + ("" if admins else "; nobody is admin")
    return Finding("permissions", True, detail)


async def diagnose(
    config: Config, *, registration: Path | None = None, store: Any = None, config_path: Path | str | None = None
) -> list[Finding]:
    """Every check, in the order a setup goes. `config_path` (the CLI's): the config
    may lack its tokens, which is then the first finding; `registration`: the file to
    compare with the config, a finding of its own when it does not exist."""
    findings: list[Finding] = []
    tokens = has_tokens(config)
    if config_path is not None:
        findings.append(check_tokens(config, config_path, registration or "registration.yaml"))
    if registration is not None:
        if not registration.exists():
            findings.append(Finding("registration", False, f"{registration} does not exist",
                                    f"run {generate_command(config_path or 'CONFIG', registration)}, then give "
                                    f"{registration} to the homeserver (app_service_config_files in Synapse) and "
                                    "restart it"))  # fmt: skip
        elif tokens:
            findings += check_registration(config, registration)
        else:
            findings.append(Finding("registration", False, f"{registration} cannot match a config without tokens",
                                    f"run {generate_command(config_path or 'CONFIG', registration)}"))
    findings += await check_homeserver(config, tokens=tokens)
    findings.append(await check_qq(config))
    findings.append(await check_database(config, store))
    findings.append(check_permissions(config))
    return findings


def report(findings: list[Finding]) -> str:
    problems = sum(not finding.ok for finding in findings)
    summary = "No problems found." if not problems else f"{problems} problem(s) found."
    return "\n".join([finding.line() for finding in findings] + [summary])
