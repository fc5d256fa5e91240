"""Issue 20: a photo received by one Palaver and answered by another reaches the model.

Each process has its own data dir (its own ``media`` directory); the store is one
PostgreSQL database.  Two tests:

- in this test process, two cores (two stores, two coordinators, two media stores, as two
  ``palaver run`` would have): B is answering the chat when A receives a photo for it, so
  B — the owner — runs the photo's turn, and its model gets the image, fetched from the
  database into B's own directory;
- with real ``palaver run`` processes (tests/cluster/palaver_cluster.py), Telegram in
  webhook mode and the fake Bot API: a photo posted to process A while process B answers
  the chat is answered by B, the fake model getting the image.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import asyncpg
import pytest
from PIL import Image

from bridge.envelope import AcceptStatus, MediaKind
from bridge.models.base import ImagePart
from tests.cluster.cores import HANG_GUARD_S, two_cores
from tests.cluster.palaver_cluster import Cluster, Poster
from tests.core.helpers import RecordingChannel, dm, make_config
from tests.media.imaging import decode, encode


def _photo() -> bytes:
    return encode(Image.new("RGB", (800, 600), (20, 160, 90)), "JPEG")


def _images(request) -> list[ImagePart]:
    return [p for turn in request.turns for p in turn.parts if isinstance(p, ImagePart)]


async def test_a_photo_received_by_a_reaches_the_model_of_b_the_owner(tmp_path, pg_url):
    release, called = asyncio.Event(), asyncio.Event()
    seen: list[Any] = []

    async def b_model(_ref, req) -> str:
        seen.append(req)
        if len(seen) == 1:  # the first turn holds the chat on B until released
            called.set()
            await release.wait()
            return "first answer"
        return f"I see {len(_images(req))} image(s)"

    def a_model(_ref, req) -> str:
        raise AssertionError("A must not run a turn of B's chat")

    config = make_config(tmp_path, agents__defaults__model__primary="local/big")  # vision
    async with two_cores(config, pg_url, (a_model, b_model), media_root=tmp_path) as (a, b):
        assert a.media is not None
        first = dm("hello")
        key = str(first.session_key)
        assert await b.core.accept(first) is AcceptStatus.ACCEPTED
        await asyncio.wait_for(called.wait(), HANG_GUARD_S)
        assert b.coord.owns(key)

        # A receives the photo (downloads it, stores it, accepts the message).
        ref = await a.media.put(_photo(), kind=MediaKind.IMAGE, mime="image/jpeg",
                                width=800, height=600)
        photo = dm("what is in it?", media=(ref,))
        assert await a.core.accept(photo) is AcceptStatus.ACCEPTED
        assert not a.coord.owns(key)
        assert not list((tmp_path / "b" / "media").rglob(f"{ref.media_id}*"))

        release.set()
        await asyncio.wait_for(_sent(b.channel, 2), HANG_GUARD_S)
        await b.core.wait_idle()
        await a.core.wait_idle()

    assert b.channel.texts() == ["first answer", "I see 1 image(s)"]
    assert a.channel.texts() == []
    [image] = _images(seen[1])
    assert decode(image.data).size == (800, 600)
    # Fetched from the database into B's own media directory.
    [fetched] = (tmp_path / "b" / "media").glob(f"{ref.media_id[:2]}/{ref.media_id}*")
    assert fetched.read_bytes() == (tmp_path / "a" / "media" / ref.media_id[:2]
                                    / fetched.name).read_bytes()


async def _sent(channel: RecordingChannel, n: int) -> None:
    """Until ``channel`` sent ``n`` messages (woken by each send)."""
    while len(channel.texts()) < n:
        await channel.sent_event.wait()
        channel.sent_event.clear()


# ------------------------------------------------------------- real palaver processes


class VisionCluster(Cluster):
    """The cluster's processes with a model that takes images."""

    def config(self, member):
        config = super().config(member)
        for model in config["models"]["providers"]["local"]["models"]:
            model["input"] = ["text", "image"]
        return config


def _image_urls(request) -> list[str]:
    urls = []
    for message in request.json.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            urls += [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
    return urls


@pytest.mark.timeout(240)
async def test_a_telegram_photo_posted_to_a_is_answered_by_b(tmp_path, pg_url, fake, models):
    # B's first answer streams slowly: B owns the chat while A receives the photo.
    models.reply("first " * 40, tokens_per_second=4)
    models.default(lambda req: f"saw {len(_image_urls(req))} image(s)")
    cluster = VisionCluster(tmp_path, pg_url, fake.token, fake.url,
                            models.url_for("openai-completions"))
    a, b = cluster.add(), cluster.add()
    chat = 4242
    try:
        for member in (a, b):  # one after the other: the first migrates
            await cluster.start(member)
        async with Poster(cluster.members) as poster:
            hello = fake.push_text(chat, chat, "hello")
            assert await poster.post({"update_id": 1, "message": hello}, first=b.index) == 1
            await asyncio.wait_for(models.wait_requests(1), HANG_GUARD_S)
            photo = fake.push_photo(chat, chat, _photo(), caption="what is in it?",
                                    width=800, height=600)
            assert await poster.post({"update_id": 2, "message": photo}, first=a.index) == 0
            conn = await asyncpg.connect(pg_url)
            try:
                # Still B's chat when A stored the photo (else A would answer it).
                owner = await conn.fetchval("SELECT owner FROM session_owners")
                await fake.wait_for_sent(2, timeout=120)
                owners = await conn.fetch(
                    "SELECT DISTINCT owner FROM turns WHERE owner IS NOT NULL")
            finally:
                await conn.close()
    finally:
        await cluster.stop_all()
    assert owner is not None and [r["owner"] for r in owners] == [owner], \
        "both turns ran on the process that answered the first message"
    sent = [m.text for m in fake.sent if m.chat_id == chat]
    assert sent[-1] == "saw 1 image(s)", (sent, b.log_tail(), a.log_tail())
    [url] = _image_urls(models.requests[-1])
    assert url.startswith("data:image/jpeg;base64,")
    assert decode(base64.b64decode(url.split(",", 1)[1])).size == (800, 600)
    # B fetched the photo from the database: A's file, now in B's own data dir too.
    a_files = sorted((tmp_path / "p0" / "data" / "media").glob("??/*.jpg"))
    b_files = sorted((tmp_path / "p1" / "data" / "media").glob("??/*.jpg"))
    assert [f.name for f in a_files] == [f.name for f in b_files] != []
