"""Who may use the bridge: config `permissions` maps a Matrix ID, a domain or `*` to
`user` (may bridge a QQ account) or `admin` (also manages the bridge). The most
specific entry wins: Matrix ID, then domain, then `*`. No entry: no access."""

from __future__ import annotations

from typing import Literal

Level = Literal["user", "admin"]


class Permissions:
    def __init__(self, rules: dict[str, Level]) -> None:
        self._rules = dict(rules)

    def level(self, mxid: str) -> Level | None:
        domain = mxid.split(":", 1)[1] if ":" in mxid else ""
        for subject in (mxid, domain, "*"):
            if subject in self._rules:
                return self._rules[subject]
        return None

    def may_use(self, mxid: str) -> bool:
        return self.level(mxid) is not None

    def is_admin(self, mxid: str) -> bool:
        return self.level(mxid) == "admin"

    def nobody_allowed(self) -> bool:
        return not self._rules
