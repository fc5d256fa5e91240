"""The door makes sure an admitted message's media are in the store before the message
(several processes: another one may answer it) — and a store that cannot take them
leaves the message unconfirmed, as any failed write does."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge.envelope import AcceptStatus, MediaKind, MediaRef, Quoted
from bridge.ports import StoreUnavailable
from bridge.store.db import StoreUnavailableError
from tests.core.helpers import dm

PHOTO = MediaRef(MediaKind.IMAGE, media_id="sha256-photo", mime="image/jpeg", size=10)
QUOTED = MediaRef(MediaKind.IMAGE, media_id="sha256-quoted", mime="image/jpeg", size=10)


class SharingMedia:
    """What the door uses of bridge.media.MediaStore: ``ensure_shared``."""

    def __init__(self) -> None:
        self.shared: list[list[str | None]] = []
        self.fail: Exception | None = None

    async def ensure_shared(self, media_ids) -> None:
        if self.fail is not None:
            raise self.fail
        self.shared.append(list(media_ids))


async def test_media_are_shared_before_the_message_is_stored(harness):
    media = SharingMedia()
    await harness.start(media=media)
    inbound = dm("look", msg_id="m1")
    inbound = replace(inbound, media=(PHOTO,), quoted=Quoted("m0", media=(QUOTED,)))
    assert await harness.core.accept(inbound) is AcceptStatus.ACCEPTED
    assert media.shared == [["sha256-photo", "sha256-quoted"]]


async def test_a_store_that_cannot_take_the_media_leaves_the_message_unconfirmed(harness):
    media = SharingMedia()
    media.fail = StoreUnavailableError("database is locked")
    await harness.start(media=media, store_retry_delays=())
    inbound = replace(dm("look", msg_id="m1"), media=(PHOTO,))
    with pytest.raises(StoreUnavailable):
        await harness.core.accept(inbound)
    assert not await harness.store.has_inbound("telegram", "default", "m1")
