"""`qqbridge generate-registration`: the appservice registration the homeserver loads.

Fresh random `as_token` and `hs_token` go into both the registration and the config
file. The config is edited, not rewritten: the two token lines are replaced (so its
comments and layout survive), or, when the file is not written one key a line (flow
style: `{appservice: {port: 29340}, ...}`), its YAML is edited round-trip. Either way
the result is read back and must mean exactly the old config plus the two tokens;
if it does not, nothing is written and the error says so.

Both files hold the tokens, so both are private: a new file is created 0600 whatever
the umask, and an existing one keeps its owner, group and mode unless others could
read it, in which case it becomes 0600.
"""

from __future__ import annotations

import copy
import io
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import yaml

from qqbridge.config import Config, ConfigError, load_config

TOKEN_KEYS = ("as_token", "hs_token")
PRIVATE = 0o600


def registration_for(config: Config) -> dict[str, Any]:
    prefix, _, suffix = config.appservice.puppet_localpart.partition("{uin}")
    domain = re.escape(config.homeserver.domain)
    puppets = f"@{re.escape(prefix)}[0-9]+{re.escape(suffix)}:{domain}"
    bot = f"@{re.escape(config.appservice.bot_localpart)}:{domain}"
    return {
        "id": config.appservice.id,
        "url": config.appservice.url,
        "as_token": config.appservice.as_token,
        "hs_token": config.appservice.hs_token,
        "sender_localpart": config.appservice.bot_localpart,
        "namespaces": {
            "users": [{"exclusive": True, "regex": puppets}, {"exclusive": True, "regex": bot}],
            "aliases": [],
            "rooms": [],
        },
        "rate_limited": False,
        "protocols": ["qq"],
        **(_ENCRYPTION if config.encryption.allow else {}),
    }


# What end-to-bridge encryption needs in the transactions (docs/encryption.md): to-device
# events (MSC2409, in the stable and the older spelling) and one-time key counts and
# device lists (MSC3202). The homeserver must enable both too (`experimental_features`).
_ENCRYPTION = {"receive_ephemeral": True, "de.sorunome.msc2409.push_ephemeral": True, "org.matrix.msc3202": True}


# ---- putting the tokens into the config ------------------------------------------------


def _set_token(text: str, key: str, value: str) -> str:
    line = re.compile(rf"^(?P<indent>[ \t]+){key}:.*$", re.MULTILINE)
    if line.search(text):
        return line.sub(lambda m: f'{m["indent"]}{key}: "{value}"', text, count=1)
    section = re.compile(r"^appservice:[ \t]*(#.*)?$", re.MULTILINE)
    header = section.search(text)
    if header:
        # indented as the section's first key is (a comment may sit at any indent)
        first = re.compile(r"^(?P<indent>[ \t]+)[^ \t#\n]", re.MULTILINE).search(text, header.end())
        indent = first["indent"] if first else "  "
        return text[: header.end()] + f'\n{indent}{key}: "{value}"' + text[header.end() :]
    return text.rstrip("\n") + f'\nappservice:\n  {key}: "{value}"\n'


def _by_lines(text: str, tokens: dict[str, str]) -> str:
    """Replace (or add) the token lines: right for a config written one key a line."""
    for key, value in tokens.items():
        text = _set_token(text, key, value)
    return text


def _round_trip(text: str, tokens: dict[str, str]) -> str:
    """Set the tokens in the parsed YAML and write it back, comments and flow style kept."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    editor = YAML(typ="rt")
    editor.preserve_quotes = True
    editor.width = 4096  # never fold a long line the user wrote on one
    data = editor.load(text)
    if not isinstance(data, dict):
        raise ValueError("the config is not a mapping")
    section = data.get("appservice")
    if section is None:
        section = data["appservice"] = CommentedMap()
    if not isinstance(section, dict):
        raise ValueError("appservice is not a mapping")
    for key, value in tokens.items():
        section[key] = DoubleQuotedScalarString(value)
    out = io.StringIO()
    editor.dump(data, out)
    return out.getvalue()


def _means(text: str, expected: dict[str, Any]) -> bool:
    try:
        return bool(yaml.safe_load(text) == expected)
    except (yaml.YAMLError, RecursionError):
        return False


def with_tokens(path: Path, text: str, tokens: dict[str, str]) -> str:
    """The config `text` with the tokens set and nothing else changed in meaning; raises
    ConfigError (naming no token) when no edit achieves that."""
    old = yaml.safe_load(text) or {}
    expected = copy.deepcopy(old)
    expected["appservice"] = {**(expected.get("appservice") or {}), **tokens}
    edited = _by_lines(text, tokens)
    if _means(edited, expected):
        return edited
    try:
        edited = _round_trip(text, tokens)
    except Exception as exc:  # ruamel's errors quote the file: name only the kind
        reason = f"its YAML could not be edited ({type(exc).__name__})"
    else:
        if _means(edited, expected):
            return edited
        reason = "editing it would have changed other settings (anchors or merge keys?)"
    raise ConfigError(
        f"{path}: cannot write the new tokens into this file: {reason}. Nothing was changed; "
        "write the appservice section one key a line (block style) and run generate-registration again"
    )


# ---- writing private files -------------------------------------------------------------

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _PrivateFile:
    """A file opened for rewriting in place (so it keeps its owner, group and links), or
    created 0600 whatever the umask; nothing is changed until `write`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | _CLOEXEC)
        except FileNotFoundError:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, PRIVATE)
            self.old_mode: int | None = None
        else:
            self.old_mode = stat.S_IMODE(os.fstat(self.fd).st_mode)

    def restrict(self, mode: int | None = None) -> str | None:
        """Give the file `mode`; by default keep an existing file's mode unless others may
        read it, and make it 0600 then. Returns a note when an existing file's mode changed."""
        old = self.old_mode
        if mode is None:
            mode = PRIVATE if old is None or old & 0o007 else old
        if old == mode:
            return None
        try:
            os.fchmod(self.fd, mode)
        except PermissionError:
            if old is None or old & 0o007:
                raise ConfigError(
                    f"{self.path}: others may read it (mode {old or 0:04o}) and only its owner can change "
                    f"that; run as its owner or `chmod 600 {self.path}` first. Nothing was changed"
                ) from None
            return None
        return None if old is None else f"{self.path}: mode {old:04o} -> {mode:04o} (it holds the tokens)"

    def write(self, text: str) -> None:
        os.ftruncate(self.fd, 0)
        view = memoryview(text.encode("utf-8"))
        while view:
            view = view[os.write(self.fd, view) :]
        os.fsync(self.fd)

    def close(self, *, undo: bool = False) -> None:
        os.close(self.fd)
        if undo and self.old_mode is None:
            self.path.unlink(missing_ok=True)


def write_private(path: Path, text: str, *, mode: int | None = None) -> str | None:
    """Write `text` to `path`, private to its owner (see `_PrivateFile.restrict`)."""
    file = _PrivateFile(path)
    try:
        note = file.restrict(mode)
        file.write(text)
    except BaseException:
        file.close(undo=True)
        raise
    file.close()
    return note


def _open(path: Path) -> _PrivateFile:
    try:
        return _PrivateFile(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write it: {exc.strerror or exc}. Nothing was changed") from None


def generate(
    config_path: Path, registration_path: Path, *, mode: int | None = None, notes: list[str] | None = None
) -> dict[str, Any]:
    """Write new tokens into the config and the registration; return the registration.

    Everything that can be checked is checked before either file changes: the config
    loads, the edit means only the new tokens, both files can be written. `mode`: the
    registration's mode, for a homeserver running as another user that must read it
    where it is (default: private). Notes on changed file modes are appended to `notes`.
    """
    if registration_path.resolve() == config_path.resolve():
        raise ConfigError(f"{registration_path}: that is the config; write the registration to another file")
    load_config(config_path, require_tokens=False)  # refuse to touch a config that is broken
    text = config_path.read_text(encoding="utf-8")
    tokens = {key: secrets.token_urlsafe(32) for key in TOKEN_KEYS}
    edited = with_tokens(config_path, text, tokens)
    registration = registration_for(load_config(config_path, text=edited))
    dumped = yaml.safe_dump(registration, sort_keys=False)
    files: list[_PrivateFile] = []
    try:
        files.append(_open(config_path))
        files.append(_open(registration_path))
        changed = [files[0].restrict(), files[1].restrict(mode)]
        files[0].write(edited)
        files[1].write(dumped)
    except BaseException:
        for file in files:
            file.close(undo=True)
        raise
    for file in files:
        file.close()
    if notes is not None:
        notes.extend(note for note in changed if note)
    return registration
