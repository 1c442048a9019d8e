"""Bridge users: control rooms, the login conversation, logout, lookups."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import pytest

from qqbridge.store import ConflictError, InvalidValueError, LoginState, NotFoundError, Store
from tests.store.clock import FakeClock

OpenStore = Callable[[], Awaitable[Store]]

ALICE, BOB = "@alice:example.org", "@bob:example.org"
MD5 = hashlib.md5(b"correct horse").hexdigest()


async def test_login_lifecycle(store: Store, clock: FakeClock) -> None:
    assert await store.users.get(ALICE) is None

    user = await store.users.set_control_room(ALICE, "!control:example.org")  # invited the bot
    assert user.mxid == ALICE and user.control_room_id == "!control:example.org"
    assert user.login_state == LoginState.LOGGED_OUT
    assert (user.qq_uin, user.password_md5, user.pending_login_uin) == (None, None, None)
    assert user.created_at == user.updated_at == 1_700_000_000_000

    clock.advance(1)
    user = await store.users.begin_login(ALICE, 123456)  # `login 123456`
    assert user.login_state == LoginState.AWAITING_PASSWORD
    assert user.pending_login_uin == 123456 and user.qq_uin is None
    assert user.updated_at == 1_700_000_001_000 and user.created_at == 1_700_000_000_000

    user = await store.users.complete_login(ALICE, 123456, MD5.upper())  # QQ said RS=0
    assert user.login_state == LoginState.LOGGED_IN
    assert user.qq_uin == 123456 and user.pending_login_uin is None
    assert user.password_md5 == MD5  # normalised to lower case

    assert await store.users.get(ALICE) == user
    assert await store.users.by_control_room("!control:example.org") == user
    assert await store.users.by_uin(123456) == user

    user = await store.users.set_login_state(ALICE, LoginState.BAD_PASSWORD)  # RES=20, re-login refused
    assert user.login_state == "bad_password" and user.password_md5 == MD5

    user = await store.users.logout(ALICE)
    assert user.login_state == LoginState.LOGGED_OUT
    assert (user.qq_uin, user.password_md5, user.pending_login_uin) == (None, None, None)
    assert user.control_room_id == "!control:example.org"  # the control room stays
    assert await store.users.by_uin(123456) is None


async def test_users_survive_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    await store.users.set_control_room(ALICE, "!c")
    before = await store.users.complete_login(ALICE, 123456, MD5)
    await store.close()
    store = await open_store()
    assert await store.users.get(ALICE) == before


async def test_the_hash_is_never_shown(store: Store) -> None:
    user = await store.users.complete_login((await store.users.upsert(ALICE)).mxid, 123456, MD5)
    assert MD5 not in repr(user) and MD5 not in str(user)


@pytest.mark.parametrize("not_a_hash", ["correct horse", MD5[:31], MD5 + "0", "z" * 32, None])
async def test_only_an_md5_hex_digest_is_kept(store: Store, not_a_hash: object) -> None:
    await store.users.upsert(ALICE)
    with pytest.raises(InvalidValueError, match="MD5"):
        await store.users.complete_login(ALICE, 123456, not_a_hash)  # type: ignore[arg-type]
    assert (await store.users.get(ALICE)).password_md5 is None  # type: ignore[union-attr]


@pytest.mark.parametrize("bad_uin", [100, 9999, 4_294_967_296, -5, "123456", True, None])
async def test_uins_must_be_qq_numbers(store: Store, bad_uin: object) -> None:
    await store.users.upsert(ALICE)
    with pytest.raises(InvalidValueError, match="not a QQ number"):
        await store.users.begin_login(ALICE, bad_uin)  # type: ignore[arg-type]


async def test_largest_uin_is_kept(store: Store) -> None:
    await store.users.upsert(ALICE)
    user = await store.users.complete_login(ALICE, 4_294_967_295, MD5)
    assert (await store.users.by_uin(4_294_967_295)) == user


async def test_one_qq_account_one_matrix_user(store: Store) -> None:
    await store.users.upsert(ALICE)
    await store.users.upsert(BOB)
    await store.users.complete_login(ALICE, 123456, MD5)
    with pytest.raises(ConflictError, match=f"123456 is already bridged by {ALICE}"):
        await store.users.begin_login(BOB, 123456)
    with pytest.raises(ConflictError):
        await store.users.complete_login(BOB, 123456, MD5)
    assert (await store.users.get(BOB)).login_state == LoginState.LOGGED_OUT  # type: ignore[union-attr]
    # Logging in again as oneself is fine; after Alice logs out, Bob may have it.
    await store.users.begin_login(ALICE, 123456)
    await store.users.logout(ALICE)
    assert (await store.users.complete_login(BOB, 123456, MD5)).qq_uin == 123456


async def test_one_control_room_per_user(store: Store) -> None:
    await store.users.set_control_room(ALICE, "!a")
    with pytest.raises(ConflictError, match=f"control room of {ALICE}"):
        await store.users.set_control_room(BOB, "!a")
    assert await store.users.get(BOB) is None  # nothing stored for the refused user
    assert (await store.users.set_control_room(ALICE, "!a2")).control_room_id == "!a2"  # moved
    assert (await store.users.set_control_room(BOB, "!a")).control_room_id == "!a"  # now free
    assert (await store.users.set_control_room(BOB, None)).control_room_id is None
    assert await store.users.by_control_room("!a") is None


async def test_upsert_user_creates_once(store: Store, clock: FakeClock) -> None:
    created = await store.users.upsert(ALICE)
    await store.users.set_control_room(ALICE, "!c")
    clock.advance(10)
    again = await store.users.upsert(ALICE)
    assert again.created_at == created.created_at and again.control_room_id == "!c"


async def test_unknown_users(store: Store) -> None:
    for action in (
        store.users.begin_login(ALICE, 123456),
        store.users.complete_login(ALICE, 123456, MD5),
        store.users.set_login_state(ALICE, LoginState.LOGGED_IN),
        store.users.logout(ALICE),
    ):
        with pytest.raises(NotFoundError, match=ALICE):
            await action
    assert await store.users.every() == []


async def test_list_users(store: Store) -> None:
    await store.users.set_control_room(BOB, "!b")
    await store.users.set_control_room(ALICE, "!a")
    await store.users.complete_login(BOB, 200000, MD5)
    assert [u.mxid for u in await store.users.every()] == [ALICE, BOB]
    assert [u.mxid for u in await store.users.every(LoginState.LOGGED_IN)] == [BOB]
    assert [u.mxid for u in await store.users.every("logged_out")] == [ALICE]


@pytest.mark.parametrize("bad", ["", None, "@a\u0000:x", 5])
async def test_bad_text_is_refused(store: Store, bad: object) -> None:
    with pytest.raises(InvalidValueError):
        await store.users.upsert(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        await store.users.set_control_room(ALICE, bad if bad is not None else "")  # type: ignore[arg-type]
    assert await store.users.every() == []
