"""Images in the prompt budget: tokens from the prepared size, at most 20 per request."""

from __future__ import annotations

import io

from PIL import Image

from bridge.envelope import ChatAddress, ChatKind, MediaKind
from bridge.media import IMAGE_ALREADY_SEEN, MediaStore
from bridge.models.base import ImagePart, TextPart
from bridge.prompt import (
    IMAGE_OMITTED,
    MAX_IMAGES_PER_REQUEST,
    build_request,
    estimate_parts,
    image_size,
    image_tokens,
)
from bridge.store.records import HistoryTurn, MessageKind, MessageStatus, StoredMessage
from tests.core.helpers import make_config


def _encode(size, fmt: str, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def test_image_size_is_read_from_the_header():
    for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
        assert image_size(_encode((321, 123), fmt)) == (321, 123), fmt
    progressive = io.BytesIO()
    Image.new("RGB", (640, 480)).save(progressive, "JPEG", progressive=True)
    assert image_size(progressive.getvalue()) == (640, 480)
    assert image_size(b"not an image") is None
    assert image_size(b"\xff\xd8\xff") is None  # truncated JPEG


def test_image_tokens_follow_the_prepared_size():
    big = ImagePart(_encode((1568, 1176), "JPEG"), "image/jpeg")
    small = ImagePart(_encode((64, 64), "PNG"), "image/png")
    assert image_tokens(big) == -(-1568 * 1176 // 750)  # 2459
    assert image_tokens(small) == 85  # the floor
    assert image_tokens(ImagePart(b"junk", "image/png")) == 1000  # unknown: flat guess
    assert estimate_parts([TextPart("abcd" * 10), big]) == 4 + 11 + 2459


def _msg(i: int, text: str, media=()) -> StoredMessage:
    return StoredMessage(
        id=i, direction="in", role="user", kind=MessageKind.CHAT, session_key="k",
        session_id=1, turn_id=i, address=ChatAddress("telegram", "default", "1",
                                                     ChatKind.DIRECT),
        platform_message_id=str(i), sender_id="1", sender_name="Ann", mentioned=False,
        text=text, media=tuple(media), quoted=None, status=MessageStatus.ANSWERED,
        reason=None, model_ref=None, reply_to_message_id=None, delivered=True,
        created_at=float(i))


async def test_at_most_twenty_images_per_request_newest_first(tmp_path):
    store = MediaStore(tmp_path / "media")
    config = make_config(tmp_path)
    model = config.model("local/big")  # input: text + image
    settings = config.agents.defaults  # imageHistoryTurns 3

    async def photo(n: int):
        return await store.put(_encode((40, 30), "PNG", (n * 9 % 256, n % 256, 7)),
                               kind=MediaKind.IMAGE, mime="image/png")

    # History: two turns with 8 photos each (newest turn 2), current: 3 messages x 6.
    history = []
    for t in (1, 2):
        refs = [await photo(t * 100 + k) for k in range(8)]
        history.append(HistoryTurn(t, (_msg(t, f"album {t}", refs),), f"nice {t}"))
    current = []
    for m in range(3):
        refs = [await photo(1000 + m * 10 + k) for k in range(6)]
        current.append(_msg(10 + m, f"batch {m}", refs))

    built = await build_request(model=model, instructions=None, summary=None,
                                history=history, current=current, group=False,
                                media_store=store, settings=settings)
    turns = built.request.turns
    images = [p for t in turns for p in t.parts if isinstance(p, ImagePart)]
    assert len(images) == MAX_IMAGES_PER_REQUEST == 20
    current_parts = turns[-1].parts
    assert sum(isinstance(p, ImagePart) for p in current_parts) == 18  # all 18 current
    # The newer history turn gets the 2 left (its last photos), the rest placeholders;
    # the oldest turn sends none.
    newer = [t for t in turns if t.role == "user" and any(
        isinstance(p, TextPart) and "album 2" in p.text for p in t.parts)][0]
    assert sum(isinstance(p, ImagePart) for p in newer.parts) == 2
    newer_text = "".join(p.text for p in newer.parts if isinstance(p, TextPart))
    assert newer_text.count(IMAGE_OMITTED) == 6
    older = [t for t in turns if t.role == "user" and any(
        isinstance(p, TextPart) and "album 1" in p.text for p in t.parts)][0]
    assert not any(isinstance(p, ImagePart) for p in older.parts)
    older_text = "".join(p.text for p in older.parts if isinstance(p, TextPart))
    assert older_text.count(IMAGE_ALREADY_SEEN) + older_text.count(IMAGE_OMITTED) == 8
    # The budget counts each 40x30 image at the floor, not a flat 1000.
    assert built.prompt_tokens < 20 * 1000


async def test_current_turn_over_the_cap_keeps_its_newest_images(tmp_path):
    store = MediaStore(tmp_path / "media")
    config = make_config(tmp_path)
    model = config.model("local/big")
    current = []
    for m in range(3):
        refs = [await store.put(_encode((20 + m, 20 + k), "PNG"), kind=MediaKind.IMAGE,
                                mime="image/png") for k in range(9)]
        current.append(_msg(m, f"msg {m}", refs))
    built = await build_request(model=model, instructions=None, summary=None, history=[],
                                current=current, group=False, media_store=store,
                                settings=config.agents.defaults)
    parts = built.request.turns[-1].parts
    images = [p for p in parts if isinstance(p, ImagePart)]
    assert len(images) == 20
    text = "".join(p.text for p in parts if isinstance(p, TextPart))
    assert text.count(IMAGE_OMITTED) == 7
    # The oldest message lost its images first: the last message kept all nine.
    widths = [image_size(p.data)[0] for p in images]
    assert widths.count(22) == 9 and widths.count(21) == 9 and widths.count(20) == 2
