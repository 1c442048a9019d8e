"""Which portals are encrypted, on a homeserver that does not encrypt by itself (issue
17): with `encryption.allow` and not `encryption.default`, a portal follows its owner's
control room - encrypted from an encrypted one, plain from a plain one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qqbridge.qq import QQClient, password_md5
from tests.e2e.conftest import PASSWORD, QQ_PASSWORDS, Stack, running_stack
from tests.e2e.test_encryption import BOT, EncryptingUser, raw


@pytest.fixture(scope="module")
def choosing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("choice"), encryption={"allow": True}) as stack:
        yield stack


@pytest.mark.parametrize(("encrypted", "owner", "contact"), [(True, 10001, 10002), (False, 10004, 10005)])
async def test_a_new_portal_is_encrypted_when_the_control_room_is(
    choosing_stack: Stack, tmp_path: Path, encrypted: bool, owner: int, contact: int
) -> None:
    stack = choosing_stack
    mxid = await stack.synapse.register_user(f"cipher{4 if encrypted else 5}", PASSWORD)
    person = await EncryptingUser(stack.synapse.base_url, mxid, PASSWORD, tmp_path / "keys").login()
    friend = QQClient(stack.sim_url, contact, local_address="127.0.0.2", timeout=10)
    await friend.login(password_md5(QQ_PASSWORDS[contact]))
    try:
        room = await (person.open_encrypted_control_room(BOT) if encrypted else person.open_control_room(BOT))
        await person.log_into_qq(room, owner)
        await friend.send_message(owner, "which kind of room?")
        puppet = f"@_qq_{contact}:localhost"
        portal = await person.accept_invite(puppet, timeout=60)
        await person.wait_for_text(portal, "which kind of room?", sender=puppet, timeout=60)
        [event] = [e for e in person.events(portal) if getattr(e, "body", None) == "which kind of room?"]
        assert (await raw(stack, person, portal, event.event_id))["type"] == (
            "m.room.encrypted" if encrypted else "m.room.message"
        )
    finally:
        await friend.logout()
        await friend.aclose()
        await person.close()
