"""The bridge's configuration: one YAML file, overridable by `QQBRIDGE_...` variables.

A nested key is reached with a double underscore: `homeserver.url` is
`QQBRIDGE_HOMESERVER__URL`. A bad value stops the start with one message naming the
key (`ConfigError`); nothing else reads files or the environment for settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

POLL_FAST_FLOOR, POLL_IDLE_FLOOR = 0.1, 0.5  # real seconds: a small time_scale must not flood QQ
MXID = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(:\d+)?$")


class ConfigError(Exception):
    """The config cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Homeserver(_Section):
    url: str = Field(description="how the bridge reaches the homeserver's client API")
    domain: str = Field(description="the server name in Matrix IDs (the part after ':')")
    public_url: str | None = Field(None, description="how others reach the homeserver, for media links")

    @field_validator("url", "public_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class Appservice(_Section):
    id: str = "qqbridge"
    host: str = "127.0.0.1"
    port: int = Field(29340, ge=1, le=65535)
    url: str = Field("http://127.0.0.1:29340", description="how the homeserver reaches the bridge")
    as_token: str = ""
    hs_token: str = ""
    bot_localpart: str = "qqbridge"
    bot_displayname: str = "QQ bridge"
    puppet_localpart: str = Field("_qq_{uin}", description="template; must contain {uin}")
    puppet_displayname: str = Field("{nick} (QQ)", description="template; may use {nick} and {uin}")
    max_connections: int = Field(1000, ge=1, le=100_000, description="beyond it the longest-waiting one is closed")
    header_timeout: float = Field(10.0, gt=0, le=600, description="seconds to send a request head, in all")
    idle_timeout: float = Field(60.0, gt=0, le=3600, description="seconds a keep-alive connection may stay silent")
    body_timeout: float = Field(30.0, gt=0, le=3600, description="seconds to send a request body, in all")

    @field_validator("puppet_localpart")
    @classmethod
    def _has_uin(cls, value: str) -> str:
        if "{uin}" not in value or not re.fullmatch(r"[a-z0-9._=\-/]*\{uin\}[a-z0-9._=\-/]*", value):
            raise ValueError("must contain {uin} and only lower-case localpart characters")
        return value


class QQ(_Section):
    server_url: str = "http://127.0.0.1:8000/"
    timeout: float = Field(45.0, gt=0, description="seconds; longer than the slow 30 s RES=3 reply")
    local_address: str | None = Field(None, description="source address for QQ requests")
    max_connections: int = Field(256, ge=1, description="QQ requests in flight at once, all accounts together "
                                 "(one shared HTTP client; one request per connection)")
    logins_per_second: float = Field(200.0, gt=0, description="QQ logins a second, all accounts together "
                                     "(paces the logins of a start-up with many accounts)")
    max_requests_per_second: float = Field(200.0, gt=0, description="GetMsgEx polls a second, all accounts "
                                           "together: active chats every 0.1 s, idle accounts share the rest, "
                                           "at most half")
    poll_fast: float = Field(1.0, gt=0, description="seconds between polls while a chat is active "
                             "(unset: 1 s times time_scale, at least 0.1 s)")
    poll_idle: float = Field(30.0, gt=0, description="slowest poll; never longer than the server's HI "
                             "(unset: 30 s times time_scale, at least 0.5 s)")
    time_scale: float = Field(1.0, gt=0, description="multiplies the protocol's waits (tests only)")

    # A poll interval set in the config is taken as it is, in real seconds: a test or a
    # demo that sets both a time_scale and its poll intervals has already chosen them
    # for that scale. Left unset, the defaults are protocol seconds and scale.

    @property
    def poll_fast_seconds(self) -> float:
        """The poll interval while a chat is active, in real seconds."""
        if "poll_fast" in self.model_fields_set:
            return self.poll_fast
        return max(POLL_FAST_FLOOR, self.poll_fast * self.time_scale)

    @property
    def poll_idle_seconds(self) -> float:
        """The slowest poll interval, in real seconds."""
        if "poll_idle" in self.model_fields_set:
            return self.poll_idle
        return max(POLL_IDLE_FLOOR, self.poll_fast_seconds, self.poll_idle * self.time_scale)


class Database(_Section):
    url: str = "sqlite:///qqbridge.db"
    retention_days: float = Field(7.0, gt=0, description="how long delivered messages stay in the database")


class Encryption(_Section):
    allow: bool = Field(False, description="read and write encrypted rooms (docs/encryption.md); needs the "
                        "homeserver's appservice extensions MSC2409 and MSC3202")
    default: bool = Field(False, description="create new portals encrypted (with allow)")
    key_wait: float = Field(30.0, gt=0, le=600, description="seconds an encrypted message waits for its room key "
                            "before the person is asked to send it again")


class Logging(_Section):
    format: Literal["console", "json"] = "console"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QQBRIDGE_", env_nested_delimiter="__", extra="forbid")

    homeserver: Homeserver
    appservice: Appservice = Appservice()
    qq: QQ = QQ()
    database: Database = Database()
    encryption: Encryption = Encryption()
    logging: Logging = Logging()
    permissions: dict[str, Literal["user", "admin"]] = Field(default_factory=dict)

    @field_validator("permissions")
    @classmethod
    def _subjects(cls, value: dict[str, str]) -> dict[str, str]:
        for subject in value:
            if subject != "*" and not subject.startswith("@") and not re.fullmatch(r"[A-Za-z0-9.\-]+(:\d+)?", subject):
                raise ValueError(f"{subject!r} is neither a Matrix ID, a domain nor '*'")
            if subject.startswith("@") and not MXID.match(subject):
                raise ValueError(f"{subject!r} is not a valid Matrix ID")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init arguments; the environment overrides them.
        return env_settings, init_settings

    # ---- derived names ---------------------------------------------------------------

    @property
    def bot_mxid(self) -> str:
        return f"@{self.appservice.bot_localpart}:{self.homeserver.domain}"

    def puppet_mxid(self, uin: int) -> str:
        return f"@{self.appservice.puppet_localpart.format(uin=uin)}:{self.homeserver.domain}"

    def puppet_uin(self, mxid: str) -> int | None:
        """The UIN of a puppet's Matrix ID, or None if it is not one of ours."""
        prefix, _, suffix = self.appservice.puppet_localpart.partition("{uin}")
        pattern = f"@{re.escape(prefix)}(\\d{{1,10}}){re.escape(suffix)}:{re.escape(self.homeserver.domain)}"
        match = re.fullmatch(pattern, mxid)
        return int(match.group(1)) if match else None

    def is_bridge_user(self, mxid: str) -> bool:
        """The bot or one of the puppets."""
        return mxid == self.bot_mxid or self.puppet_uin(mxid) is not None


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: {key}: {first['msg']}{more}"


# A quoted fragment of the file in PyYAML's problem text ("... the tag '!xyz'"): kept when
# it is one character or one of PyYAML's own token names ('<stream end>'), else hidden.
_QUOTED = re.compile(r"""(['"])(.*?)\1""")
_ONE_CHARACTER = re.compile(r"\\?.|\\x[0-9a-f]{2}|\\u[0-9a-f]{4}|\\U[0-9a-f]{8}", re.DOTALL)
_TOKEN_NAME = re.compile(r"<[a-z ]+>")


def describe_yaml_error(exc: yaml.YAMLError, text: str = "") -> str:
    """Where and what the YAML error is, without any of the file's text.

    PyYAML's own message quotes the offending line (with a caret under it), and in a
    config that line may hold a token or a password; so this says only the line, the
    column and the problem, and hides quoted fragments of the source in the problem.
    """

    def hide(message: str) -> str:
        def keep_or_hide(match: re.Match[str]) -> str:
            keep = _ONE_CHARACTER.fullmatch(match[2]) or _TOKEN_NAME.fullmatch(match[2])
            return match[0] if keep else f"{match[1]}...{match[1]}"

        return _QUOTED.sub(keep_or_hide, message)

    if isinstance(exc, yaml.MarkedYAMLError):
        where = ""
        if exc.problem_mark is not None:
            where = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}: "
        problem = hide(exc.problem or exc.context or "cannot parse")
        if exc.context and exc.problem:
            context = hide(exc.context)
            if exc.context_mark is not None:
                context += f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            problem += f" ({context})"
        return where + problem
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a byte"
        return f"line {line}, column {column}: {character} is not allowed in YAML"
    return type(exc).__name__


def load_config(path: str | Path, *, require_tokens: bool = True, text: str | None = None) -> Config:
    """Read the YAML file, apply the environment, validate; raise ConfigError naming the key.

    `text`: the file's content as it is about to be written (`path` names it in errors).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is not valid UTF-8)") from None
    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {describe_yaml_error(exc, text)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections")
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path))) from None
    if require_tokens:
        for key in ("as_token", "hs_token"):
            if len(getattr(config.appservice, key)) < 16:
                raise ConfigError(
                    f"{path}: appservice.{key}: missing or too short; run "
                    f"`qqbridge generate-registration -c {path} -o registration.yaml`"
                )
    return config
