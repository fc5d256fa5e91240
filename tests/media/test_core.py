"""Images through the whole conversation core: store, worker, prompt, router, real client."""

from __future__ import annotations

import contextlib

import pytest
from PIL import Image

pytest.importorskip("bridge.conversation")

from bridge.config.schema import Config  # noqa: E402
from bridge.conversation import ConversationCore  # noqa: E402
from bridge.envelope import ChatAddress, ChatKind, Inbound, MediaKind  # noqa: E402
from bridge.media import IMAGE_ALREADY_SEEN  # noqa: E402
from bridge.models.router import ModelRouter  # noqa: E402
from bridge.ports import Capabilities, Channel, ChannelHealth, Markup  # noqa: E402
from bridge.store import Store  # noqa: E402
from tests.fakes.model_server import FakeModelServer  # noqa: E402
from tests.media.imaging import decode, encode  # noqa: E402
from tests.media.test_wire import wire_images, wire_text  # noqa: E402

ADDRESS = ChatAddress("console", "default", "local", ChatKind.DIRECT)


class RecordingChannel(Channel):
    name = "console"
    account = "default"
    capabilities = Capabilities(text_chunk_limit=4000, markup=Markup.PLAIN)

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def start(self, sink) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, out, progress=None) -> list[str]:
        if progress is not None and progress.start >= 1:
            return []  # one chunk per reply, already sent
        self.sent.append(out.text)
        if progress is not None:
            await progress.report(0, str(len(self.sent)))
        return [str(len(self.sent))]

    def typing(self, address):
        return contextlib.nullcontext()

    def health(self) -> ChannelHealth:
        return ChannelHealth(True)


@pytest.mark.parametrize("api", ["openai-responses", "anthropic-messages"])
async def test_core_sends_recent_images_placeholders_and_survives_refusals(
    files, tmp_path, api
):
    async with FakeModelServer() as server:
        config = Config.model_validate({
            "dataDir": str(tmp_path / "data"),
            "models": {"mode": "replace", "providers": {"fake": {
                "baseUrl": server.url_for(api), "api": api, "apiKey": "k",
                "models": [{"id": "eye", "input": ["text", "image"]}]}}},
            "agents": {"defaults": {
                "model": "fake/eye", "imageHistoryTurns": 2,
                "imageRoots": list(files.settings.imageRoots),
                "imageMaxBytes": files.settings.imageMaxBytes}},
            "channels": {"console": {"enabled": True}},
        })
        store = await Store.open(tmp_path / "core.db")
        router = ModelRouter(lambda: config)
        channel = RecordingChannel()
        core = ConversationCore(store, config, router, media=files.store, channels=[channel])
        await core.start()
        try:
            for i in range(4):
                photo = await files.store.put(
                    encode(Image.new("RGB", (32, 32), (60 * i, 0, 0)), "PNG"),
                    kind=MediaKind.IMAGE, mime="image/png")
                await core.accept(Inbound(ADDRESS, "local", f"m{i}", float(i),
                                          text=f"photo {i}", media=(photo,)))
                await core.wait_idle()
            hostile = f"/etc/passwd {files.at('bomb.png')} {files.at('escape.jpg')}"
            await core.accept(Inbound(ADDRESS, "local", "m4", 4.0,
                                      text=f"{hostile} and {files.at('ok.jpg')}"))
            await core.wait_idle()
        finally:
            await core.stop(0.5)
            await router.aclose()
            await store.close()
    assert len(channel.sent) == 5  # every turn answered, the hostile one too
    body = server.requests[-1].json
    images = wire_images(body, api)
    # imageHistoryTurns=2: photos 2 and 3 again, then the one loadable reference.
    assert [decode(d).size for _, d in images] == [(32, 32), (32, 32), (300, 200)]
    assert [abs(decode(d).getpixel((4, 4))[0] - 60 * i) < 8
            for (_, d), i in zip(images[:2], (2, 3), strict=True)] == [True, True]
    text = wire_text(body, api)
    assert text.count(IMAGE_ALREADY_SEEN) == 2
    assert f"{hostile} and {files.at('ok.jpg')}" in text
