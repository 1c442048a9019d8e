"""What a portal event becomes on QQ (no I/O)."""

from __future__ import annotations

from qqbridge.bridge.relay.matrix_to_qq import outgoing_text, strip_reply_fallback

HS = "https://hs.example.org"


def test_text_notice_and_emote() -> None:
    assert outgoing_text("m.room.message", {"msgtype": "m.text", "body": "hi <b>"}, HS) == "hi <b>"
    assert outgoing_text("m.room.message", {"msgtype": "m.notice", "body": "fyi"}, HS) == "fyi"
    assert outgoing_text("m.room.message", {"msgtype": "m.emote", "body": "waves"}, HS) == "* waves"


def test_formatted_body_is_sent_as_its_plain_body() -> None:
    content = {"msgtype": "m.text", "body": "bold move", "format": "org.matrix.custom.html",
               "formatted_body": "<b>bold</b> move"}  # fmt: skip
    assert outgoing_text("m.room.message", content, HS) == "bold move"


def test_reply_fallback_is_stripped_only_from_replies() -> None:
    body = "> <@a:x> the question\n> second line\n\nthe answer"
    reply = {"msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {"event_id": "$q"}}}
    assert outgoing_text("m.room.message", reply, HS) == "the answer"
    quote = {"msgtype": "m.text", "body": "> a quote I typed\n\nmine"}
    assert outgoing_text("m.room.message", quote, HS) == "> a quote I typed\n\nmine"
    assert strip_reply_fallback("no quote") == "no quote"


def test_edit_goes_as_the_corrected_text() -> None:
    edit = {"msgtype": "m.text", "body": "* fixed", "m.new_content": {"msgtype": "m.text", "body": "fixed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$o"}}  # fmt: skip
    assert outgoing_text("m.room.message", edit, HS) == "(edited) fixed"


def test_media_location_and_stickers_become_a_line_with_a_link() -> None:
    image = {"msgtype": "m.image", "body": "cat.png", "url": "mxc://hs.example.org/abc"}
    assert outgoing_text("m.room.message", image, HS) == f"[image: cat.png] {HS}/_matrix/media/v3/download/hs.example.org/abc"
    audio = {"msgtype": "m.audio", "body": "voice.ogg", "url": "not-mxc"}
    assert outgoing_text("m.room.message", audio, HS) == "[audio: voice.ogg] (no link)"
    where = {"msgtype": "m.location", "body": "Suzhou", "geo_uri": "geo:31.3,120.6"}
    assert outgoing_text("m.room.message", where, HS) == "[location: Suzhou] geo:31.3,120.6"
    sticker = {"body": "thumbs up", "url": "mxc://hs.example.org/s1"}
    assert outgoing_text("m.sticker", sticker, HS).startswith("[sticker: thumbs up] https://")


def test_nothing_to_carry() -> None:
    assert outgoing_text("m.room.message", {"msgtype": "m.text"}, HS) is None
    assert outgoing_text("m.room.message", {"msgtype": "m.text", "body": "   "}, HS) is None
    assert outgoing_text("m.room.topic", {"topic": "x"}, HS) is None
