"""A photo reaching each API in its own wire form, through the real clients and prompt."""

from __future__ import annotations

import base64

import aiohttp
import pytest
from PIL import Image

from bridge.config.schema import Config
from bridge.envelope import ChatAddress, ChatKind, MediaKind
from bridge.media import IMAGE_ALREADY_SEEN, user_parts
from bridge.models.base import ModelRequest, Turn
from bridge.models.clients import make_client
from bridge.store.records import HistoryTurn, MessageKind, MessageStatus, StoredMessage
from tests.fakes.model_server import FakeModelServer
from tests.media.imaging import decode, encode

APIS = ["openai-responses", "openai-completions", "anthropic-messages"]


def model_for(server: FakeModelServer, api: str, *, vision: bool = True):
    config = Config.model_validate({"models": {"mode": "replace", "providers": {"fake": {
        "baseUrl": server.url_for(api), "api": api, "apiKey": "test-key",
        "models": [{"id": "eye", "input": ["text", "image"] if vision else ["text"]}],
    }}}})
    return config.model("fake/eye")


def wire_images(body: dict, api: str) -> list[tuple[str, bytes]]:
    """(mime, bytes) of every image in a recorded request body, in order."""
    turns = body["input"] if api == "openai-responses" else body["messages"]
    found = []
    for turn in turns:
        content = turn["content"]
        if isinstance(content, str):
            continue
        for part in content:
            if part["type"] in ("input_image", "image_url"):
                url = part["image_url"] if part["type"] == "input_image" else (
                    part["image_url"]["url"])
                head, data = url.split(",", 1)
                assert head.startswith("data:") and head.endswith(";base64")
                found.append((head[5:-7], base64.b64decode(data)))
            elif part["type"] == "image":
                assert part["source"]["type"] == "base64"
                found.append((part["source"]["media_type"],
                              base64.b64decode(part["source"]["data"])))
    return found


def wire_text(body: dict, api: str) -> str:
    turns = body["input"] if api == "openai-responses" else body["messages"]
    out = []
    for turn in turns:
        content = turn["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            out.extend(p["text"] for p in content if p["type"] in ("text", "input_text"))
    return "\n".join(out)


@pytest.mark.parametrize("api", APIS)
async def test_photo_and_reference_reach_each_api_in_its_form(files, api):
    photo = await files.store.put(
        encode(Image.new("RGB", (3000, 1500), (0, 128, 255)), "JPEG"),
        kind=MediaKind.IMAGE, mime="image/jpeg",
    )
    text = f"compare {files.at('ok.jpg')} with this"
    parts = await user_parts(text, [photo], store=files.store, vision=True,
                             settings=files.settings)
    async with FakeModelServer() as server, aiohttp.ClientSession() as session:
        server.reply("a red square and a blue rectangle")
        client = make_client(model_for(server, api), session)
        done = await client.complete(ModelRequest("Be brief.", (Turn("user", parts),)))
        body = server.requests[0].json
    assert done.text == "a red square and a blue rectangle"
    user = (body["input"] if api == "openai-responses" else body["messages"])[-1]
    kinds = [p["type"] for p in user["content"]]
    expected = {"openai-responses": ["input_text", "input_image", "input_text", "input_image"],
                "openai-completions": ["text", "image_url", "text", "image_url"],
                "anthropic-messages": ["text", "image", "text", "image"]}[api]
    assert kinds == expected
    images = wire_images(body, api)
    assert [mime for mime, _ in images] == ["image/jpeg", "image/jpeg"]
    assert [decode(data).size for _, data in images] == [(300, 200), (1568, 784)]
    assert decode(images[1][1]).getpixel((10, 10))[2] > 200  # the blue photo, 2nd
    assert "test-key" not in str(body)


@pytest.mark.parametrize("api", APIS)
async def test_text_only_model_gets_placeholders_on_the_wire(files, api):
    photo = await files.store.put(encode(Image.new("RGB", (20, 20)), "PNG"),
                                  kind=MediaKind.IMAGE, mime="image/png")
    text = f"see {files.at('ok.jpg')}"
    parts = await user_parts(text, [photo], store=files.store, vision=False,
                             settings=files.settings)
    async with FakeModelServer() as server, aiohttp.ClientSession() as session:
        client = make_client(model_for(server, api, vision=False), session)
        await client.complete(ModelRequest(None, (Turn("user", parts),)))
        body = server.requests[0].json
    assert wire_images(body, api) == []
    assert wire_text(body, api) == f"{text}\n[image]"


# ----------------------------------------------- through the conversation core's prompt


def stored(i: int, text: str, media=()) -> StoredMessage:
    return StoredMessage(
        id=i, direction="in", role="user", kind=MessageKind.CHAT, session_key="t:a:direct:1",
        session_id=1, turn_id=i, address=ChatAddress("console", "default", "1", ChatKind.DIRECT),
        platform_message_id=str(i), sender_id="1", sender_name="Ann", mentioned=False,
        text=text, media=tuple(media), quoted=None, status=MessageStatus.ANSWERED, reason=None,
        model_ref=None, reply_to_message_id=None, delivered=True, created_at=float(i),
    )


@pytest.mark.parametrize("api", APIS)
async def test_a_session_reinjects_recent_images_and_placeholders_older(files, api):
    from bridge.prompt import build_request

    refs = [await files.store.put(
        encode(Image.new("RGB", (32, 32), (40 * i, 0, 0)), "PNG"),
        kind=MediaKind.IMAGE, mime="image/png") for i in range(6)]
    history = [HistoryTurn(i, (stored(i, f"photo {i}", [refs[i]]),), f"seen {i}")
               for i in range(5)]
    current = [stored(5, f"and {files.at('ok.jpg')}?", [refs[5]])]
    async with FakeModelServer() as server, aiohttp.ClientSession() as session:
        model = model_for(server, api)
        built = await build_request(model=model, instructions=None, summary=None,
                                    history=history, current=current, group=False,
                                    media_store=files.store, settings=files.settings)
        await make_client(model, session).complete(built.request)
        body = server.requests[0].json
    images = wire_images(body, api)
    # imageHistoryTurns=3: turns 2, 3, 4 re-injected, plus the current reference and photo.
    reds = [decode(data).getpixel((5, 5))[0] for _, data in images]
    assert len(images) == 5
    assert [abs(r - 40 * i) < 8 for r, i in zip(reds[:3], (2, 3, 4), strict=True)] == [True] * 3
    assert decode(images[3][1]).size == (300, 200) and decode(images[4][1]).size == (32, 32)
    text = wire_text(body, api)
    assert f"photo 0\n{IMAGE_ALREADY_SEEN}" in text and f"photo 1\n{IMAGE_ALREADY_SEEN}" in text
    assert text.count(IMAGE_ALREADY_SEEN) == 2


@pytest.mark.parametrize("api", APIS)
async def test_refused_images_do_not_stop_the_turn(files, api):
    hostile = ["/etc/passwd", "~/.ssh/id_rsa", "../../outside/secret.jpg",
               files.at("escape.jpg"), files.at("fake.png"), files.at("bomb.png"),
               files.at("trunc.jpg"), files.at("big.jpg")]
    text = "check " + " ".join(hostile) + f" and {files.at('ok.jpg')}"
    bomb = await files.store.put((files.pics / "bomb.png").read_bytes(),
                                 kind=MediaKind.IMAGE, mime="image/png")
    parts = await user_parts(text, [bomb], store=files.store, vision=True,
                             settings=files.settings)
    async with FakeModelServer() as server, aiohttp.ClientSession() as session:
        server.reply("only one picture came through")
        done = await make_client(model_for(server, api), session).complete(
            ModelRequest(None, (Turn("user", parts),)))
        body = server.requests[0].json
    assert done.text == "only one picture came through"
    assert [decode(d).size for _, d in wire_images(body, api)] == [(300, 200)]
    assert wire_text(body, api) == f"{text}\n[image]"
