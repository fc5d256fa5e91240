"""user_parts: images at the right place, placeholders, refusals, caching, the store."""

from __future__ import annotations

import logging
import os

import pytest
from aiohttp import web
from PIL import Image

from bridge.envelope import MediaKind, MediaRef
from bridge.images import ImageLimits, ImageRefused, Refusal
from bridge.media import (
    IMAGE_ALREADY_SEEN,
    MAX_IMAGES_PER_MESSAGE,
    find_references,
    images_included,
    media_reference,
    user_parts,
)
from bridge.models.base import ImagePart, TextPart
from tests.media.imaging import decode, encode


async def parts_of(files, text, media=(), **kw):
    kw.setdefault("settings", files.settings)
    kw.setdefault("vision", True)
    return await user_parts(text, media, store=files.store, **kw)


def text_of(parts) -> str:
    return "".join(p.text for p in parts if isinstance(p, TextPart))


def shape(parts) -> list:
    return [p.text if isinstance(p, TextPart) else "<image>" for p in parts]


async def photo(files, colour=(10, 120, 250), size=(64, 48)) -> MediaRef:
    data = encode(Image.new("RGB", size, colour), "JPEG")
    return await files.store.put(data, kind=MediaKind.IMAGE, mime="image/jpeg")


# ------------------------------------------------------------------------- vision models


async def test_attached_photo_follows_the_text(files):
    ref = await photo(files, size=(2000, 1000))
    parts = await parts_of(files, "what is this?", [ref])
    assert shape(parts) == ["what is this?", "<image>"]
    assert parts[1].mime == "image/jpeg"
    assert decode(parts[1].data).size == (1568, 784)


async def test_references_of_every_kind_are_injected_at_their_position(files):
    stored = await photo(files)
    text = (
        f"a {files.at('ok.jpg')}, b ~/shots/s.png c \"./in album.jpg\" d ../ok.jpg "
        f"e file://{files.albums.as_posix().replace(' ', '%20')}/in%20album.jpg "
        f"f {media_reference(stored.media_id)} g {files.at('inner.jpg')} end"
    )
    parts = await parts_of(files, text)
    assert shape(parts) == [
        f"a {files.at('ok.jpg')}", "<image>",
        ", b ~/shots/s.png", "<image>",
        ' c "./in album.jpg"', "<image>",
        " d ../ok.jpg", "<image>",
        f" e file://{files.albums}/in%20album.jpg", "<image>",
        f" f media:{stored.media_id}", "<image>",
        f" g {files.at('inner.jpg')}", "<image>",
        " end",
    ]
    assert text_of(parts) == text
    sizes = [decode(p.data).size for p in parts if isinstance(p, ImagePart)]
    assert sizes == [(300, 200), (20, 20), (30, 20), (300, 200), (30, 20), (64, 48), (300, 200)]


REFUSALS = [
    ("/etc/passwd", Refusal.OUTSIDE_ROOTS),
    ("~/.ssh/id_rsa", Refusal.OUTSIDE_ROOTS),
    ("../../outside/secret.jpg", Refusal.OUTSIDE_ROOTS),  # traversal from the base dir
    ("{pics}/albums/../../outside/secret.jpg", Refusal.OUTSIDE_ROOTS),
    ("{pics}/escape.jpg", Refusal.OUTSIDE_ROOTS),  # symlink out of the root
    ("{pics}/linkdir/secret.jpg", Refusal.OUTSIDE_ROOTS),  # symlinked folder
    ("{outside}/secret.jpg", Refusal.OUTSIDE_ROOTS),
    ("file://{outside}/secret.jpg", Refusal.OUTSIDE_ROOTS),
    ("file://evil.example{pics}/ok.jpg", Refusal.UNSUPPORTED),
    ("{pics}/fake.png", Refusal.NOT_IMAGE),  # a PDF named .png
    ("{pics}/bomb.png", Refusal.BOMB),
    ("{pics}/trunc.jpg", Refusal.CORRUPT),
    ("{pics}/big.jpg", Refusal.TOO_LARGE),
    ("{pics}/missing.jpg", Refusal.NOT_FOUND),
    ("{pics}/albums", Refusal.NOT_FOUND),  # a directory
    ("{pics}/pipe.jpg", Refusal.NOT_FOUND),  # a FIFO: must not hang
    ("media:" + "0" * 64, Refusal.NOT_FOUND),
]


@pytest.mark.parametrize("written, reason", REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refused_references_stay_text_and_are_logged(files, caplog, written, reason):
    written = written.format(pics=files.pics, outside=files.outside)
    text = f"look at {written} and {files.at('ok.jpg')} please"
    with caplog.at_level(logging.DEBUG, logger="bridge"):
        parts = await parts_of(files, text)
    # The turn goes on: the other image still arrives, every word of the text is kept.
    assert shape(parts) == [f"look at {written} and {files.at('ok.jpg')}", "<image>", " please"]
    assert reason.value in caplog.text
    (ref, _ok) = find_references(text)
    roots = (str(files.store.root), *files.settings.imageRoots)
    with pytest.raises(ImageRefused) as caught:
        await files.store.prepared_reference(
            ref, roots, ImageLimits.from_settings(files.settings),
            base_dir=files.settings.imageRoots[0],
        )
    assert caught.value.reason is reason


async def test_nothing_outside_the_store_is_allowed_by_default(files):
    text = f"{files.at('ok.jpg')} ~/shots/s.png ./x.jpg"
    parts = await parts_of(files, text, settings=None)
    assert parts == (TextPart(text),)


async def test_remote_urls_are_never_fetched(files):
    hits = []

    async def handler(request):
        hits.append(request.path)
        return web.Response(body=encode(Image.new("RGB", (8, 8)), "PNG"),
                            content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]
        text = f"see http://127.0.0.1:{port}/cat.png and https://127.0.0.1:{port}/dog.jpg"
        assert await parts_of(files, text) == (TextPart(text),)
        assert hits == []
    finally:
        await runner.cleanup()


async def test_attachments_images_and_others(files):
    png_doc = await files.store.put(
        encode(Image.new("RGB", (10, 10)), "PNG"), kind=MediaKind.DOCUMENT, mime="image/png",
        filename="scan.png",
    )
    pdf = await files.store.put(b"%PDF-1.7\n", kind=MediaKind.DOCUMENT,
                                mime="application/pdf", filename="a.pdf")
    lottie = await files.store.put(b'\x1f\x8b{"v":"5"}', kind=MediaKind.STICKER)
    voice = MediaRef(MediaKind.VOICE, duration_s=4)
    missing = MediaRef(MediaKind.IMAGE, note="too large to download")
    parts = await parts_of(files, "", [png_doc, pdf, lottie, voice, missing])
    assert shape(parts) == [
        "<image>",
        "[document, 'a.pdf']\n[sticker]\n[voice note, 4 s]\n[image, too large to download]",
    ]


async def test_images_per_message_are_bounded(files):
    text = " ".join([files.at("ok.jpg")] * (MAX_IMAGES_PER_MESSAGE + 2))
    parts = await parts_of(files, text)
    assert sum(isinstance(p, ImagePart) for p in parts) == MAX_IMAGES_PER_MESSAGE
    assert text_of(parts) == text


async def test_empty_message_gives_one_empty_text_part(files):
    assert await parts_of(files, "") == (TextPart(""),)
    assert await parts_of(files, "", vision=False) == (TextPart(""),)


# ------------------------------------------------------------- text-only models and history


async def test_text_only_model_gets_no_image_and_no_file_is_read(files, prepare_calls):
    ref = await photo(files)
    text = f"see {files.at('ok.jpg')} and {files.at('bomb.png')}"
    parts = await parts_of(files, text, [ref], vision=False)
    assert parts == (TextPart(f"{text}\n[image]"),)
    assert prepare_calls == []


async def test_older_turns_get_a_placeholder_in_place_of_each_image(files):
    ref = await photo(files)
    text = f"see {files.at('ok.jpg')} and {files.at('fake.png')} ok"
    parts = await parts_of(files, text, [ref], include_images=False)
    assert parts == (TextPart(
        f"see {files.at('ok.jpg')} {IMAGE_ALREADY_SEEN} and {files.at('fake.png')} ok\n"
        f"{IMAGE_ALREADY_SEEN}"
    ),)


def test_images_included_covers_the_current_and_last_n_completed_turns(files):
    assert [images_included(n, files.settings) for n in range(6)] == [
        True, True, True, True, False, False,
    ]
    none = files.settings.model_copy(update={"imageHistoryTurns": 0})
    assert [images_included(n, none) for n in range(3)] == [True, False, False]
    assert images_included(3) and not images_included(4)  # default 3


async def test_a_session_reinjects_the_last_n_turns_and_placeholders_older(files):
    # Six user messages, each with its own photo; the last is the turn being answered.
    colours = [(40 * i, 0, 0) for i in range(6)]
    refs = [await photo(files, colour) for colour in colours]
    prompt = []
    for i, ref in enumerate(refs):
        turns_back = len(refs) - 1 - i
        prompt.append(await parts_of(files, f"msg {i}", [ref],
                                     include_images=images_included(turns_back, files.settings)))
    assert [shape(p) for p in prompt] == (
        [[f"msg {i}\n{IMAGE_ALREADY_SEEN}"] for i in range(2)]
        + [[f"msg {i}", "<image>"] for i in range(2, 6)]
    )
    # Re-injected images are the ones of their own message.
    reds = [decode(p[1].data).getpixel((5, 5))[0] for p in prompt[2:]]
    assert all(abs(red - 40 * i) < 8 for red, i in zip(reds, range(2, 6), strict=True))


# -------------------------------------------------------------------------------- caching


async def test_prepared_images_are_cached_in_memory_and_on_disk(files, prepare_calls):
    ref = await photo(files)
    text = f"see {files.at('ok.jpg')}"
    first = await parts_of(files, text, [ref])
    assert len(prepare_calls) == 2
    assert await parts_of(files, text, [ref]) == first
    assert len(prepare_calls) == 2  # memory

    from bridge.media import MediaStore

    files.store = MediaStore(files.store.root)  # a restart: the memory cache is gone
    assert await parts_of(files, text, [ref]) == first
    assert len(prepare_calls) == 2  # disk: <root>/prepared/
    assert len(list((files.store.root / "prepared").rglob("*.jpg"))) == 2

    smaller = files.settings.model_copy(update={"imageMaxDimensionPx": 100})
    parts = await parts_of(files, text, [ref], settings=smaller)
    assert len(prepare_calls) == 4  # other settings, other prepared versions
    assert decode(parts[1].data).size == (100, 67)


async def test_old_turn_placeholders_need_no_bytes_once_prepared(files, prepare_calls):
    ref = await photo(files)
    await parts_of(files, "x", [ref])
    from bridge.media import MediaStore

    files.store = MediaStore(files.store.root)
    os.chmod(next((files.store.root / "prepared").rglob("*.jpg")), 0)  # unreadable now
    parts = await parts_of(files, "x", [ref], include_images=False)
    assert parts == (TextPart(f"x\n{IMAGE_ALREADY_SEEN}"),)
    assert len(prepare_calls) == 1


async def test_refusals_are_cached_too(files, prepare_calls, caplog):
    text = f"{files.at('trunc.jpg')}"
    with caplog.at_level(logging.WARNING, logger="bridge"):
        for _ in range(3):
            assert await parts_of(files, text) == (TextPart(text),)
    assert len(prepare_calls) == 1
    assert caplog.text.count("corrupt") == 1


async def test_an_edited_file_is_prepared_again(files, prepare_calls):
    text = files.at("ok.jpg")
    before = await parts_of(files, text)
    (files.pics / "ok.jpg").write_bytes(encode(Image.new("RGB", (50, 50), (0, 0, 255)), "JPEG"))
    after = await parts_of(files, text)
    assert len(prepare_calls) == 2
    assert decode(before[1].data).size == (300, 200) and decode(after[1].data).size == (50, 50)


# ---------------------------------------------------------------------------- media store


async def test_store_names_files_by_content_hash_only(files):
    import hashlib

    data = b"\x89PNG hostile"
    ref = await files.store.put(data, kind=MediaKind.DOCUMENT, mime="../../x",
                                filename="../../../../etc/cron.d/evil.png")
    digest = hashlib.sha256(data).hexdigest()
    assert ref.media_id == digest and ref.filename == "../../../../etc/cron.d/evil.png"
    stored = [p for p in files.store.root.rglob("*") if p.is_file()]
    assert stored == [files.store.root / digest[:2] / f"{digest}.bin"]
    assert files.store.path_for(digest) == stored[0]
    for bad in ("../../etc/passwd", digest + "/../../x", "*", digest[:10], ""):
        with pytest.raises(ValueError):
            files.store.path_for(bad)


async def test_hostile_text_never_raises(files):
    text = (f"{files.at('ok.jpg')}\x00.png /{'a' * 5000}.png ~/../../../../etc/shadow "
            + "/x " * 500 + files.at("ok.jpg"))
    parts = await parts_of(files, text)
    assert text_of(parts) == text
    # Only the first MAX_REFERENCES_PER_MESSAGE candidates are looked up on disk.
    assert not any(isinstance(p, ImagePart) for p in parts)
