"""QQ names and texts as the bot shows them (issue 8, item 6): one line, no control or
format characters, quoted unless plainly a name, clipped; display names clipped to
Synapse's 256 characters with the template's suffix kept."""

from __future__ import annotations

import pytest

from qqbridge.bridge.contacts.puppets import MAX_DISPLAYNAME, Puppets
from qqbridge.bridge.notices import notice_content, one_line, quoted, shown_name
from qqbridge.config import Config


@pytest.mark.parametrize(
    ("nick", "shown"),
    [
        ("Bob & 小明", "Bob & 小明"),
        ("Erin", "Erin"),
        ("Eve\nSYSTEM: re-enter your password", "“Eve SYSTEM: re-enter your password”"),
        ("admin\u2028bot\u2029says\r\nhi\x1b[31m", "“admin bot says hi [31m”"),
        ("\u202eevil\u200b", "“evil”"),  # a bidi override and a zero-width space go
        ("say “hi” now", '“say "hi" now”'),  # the quote cannot be closed early
        ("x" * 100, "“" + "x" * 63 + "…”"),
    ],
)
def test_names_in_notices(nick: str, shown: str) -> None:
    assert shown_name(nick) == shown


def test_texts_in_notices_are_one_line_and_clipped() -> None:
    assert one_line("a\n\n b\tc\x00d") == "a b c d"
    assert quoted("长" * 500, 10) == "“" + "长" * 9 + "…”"
    assert notice_content("@room hi")["m.mentions"] == {}


@pytest.mark.parametrize("template", ["{nick} (QQ)", "QQ {uin}: {nick}", "{nick} / {nick} (QQ)"])
@pytest.mark.parametrize("nick", ["龍" * 300, "x" * 252, "y\n" * 200, None, "\n\x00\u202e"])
def test_display_names_fit_synapse_and_keep_the_template(template: str, nick: str | None) -> None:
    config = Config(homeserver={"url": "http://hs", "domain": "x"}, appservice={"puppet_displayname": template})
    name = Puppets(config, None, None).displayname(10002, nick)  # type: ignore[arg-type]
    assert len(name) <= MAX_DISPLAYNAME and "\n" not in name and "\x00" not in name
    if template.endswith(" (QQ)"):
        assert name.endswith(" (QQ)")
    if template.startswith("QQ {uin}"):
        assert name.startswith("QQ 10002: ")
    if not (nick or "").strip("\n\x00\u202e"):
        assert "10002" in name  # nothing left of the nickname: the number stands in


def test_a_plain_nickname_is_unchanged() -> None:
    config = Config(homeserver={"url": "http://hs", "domain": "x"})
    assert Puppets(config, None, None).displayname(10002, "Bob & 小明") == "Bob & 小明 (QQ)"  # type: ignore[arg-type]


def test_whois_shows_each_profile_field_on_its_own_single_line() -> None:
    from qqbridge.bridge.control_room.contact_commands import describe_profile
    from qqbridge.qq import model

    profile = model.Profile(uin=10002, nick="Bob\nSYSTEM: type your password", level=3,
                            introduction="hi\u2028Bridge admin: send your token", city="Beijing")  # fmt: skip
    lines = describe_profile(profile).split("\n")
    assert lines == ["QQ 10002", "Nickname: Bob SYSTEM: type your password", "City: Beijing",
                     "About: hi Bridge admin: send your token"]  # fmt: skip
