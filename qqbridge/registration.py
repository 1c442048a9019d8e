"""`qqbridge generate-registration`: the appservice registration the homeserver loads.

Fresh random `as_token` and `hs_token` go into both the registration and the config
file (rewriting just those two lines, so the config's comments survive).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import yaml

from qqbridge.config import Config, load_config


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
    }


def _set_token(text: str, key: str, value: str) -> str:
    line = re.compile(rf"^(?P<indent>[ \t]+){key}:.*$", re.MULTILINE)
    if line.search(text):
        return line.sub(lambda m: f'{m["indent"]}{key}: "{value}"', text, count=1)
    section = re.compile(r"^appservice:[ \t]*(#.*)?$", re.MULTILINE)
    if section.search(text):
        return section.sub(lambda m: f'{m[0]}\n  {key}: "{value}"', text, count=1)
    return text.rstrip("\n") + f'\nappservice:\n  {key}: "{value}"\n'


def generate(config_path: Path, registration_path: Path) -> dict[str, Any]:
    """Write new tokens into the config and the registration; return the registration."""
    load_config(config_path, require_tokens=False)  # refuse to touch a config that is broken
    text = config_path.read_text(encoding="utf-8")
    for key in ("as_token", "hs_token"):
        text = _set_token(text, key, secrets.token_urlsafe(32))
    config_path.write_text(text, encoding="utf-8")
    registration = registration_for(load_config(config_path))
    registration_path.write_text(yaml.safe_dump(registration, sort_keys=False), encoding="utf-8")
    return registration
