"""The console of a Palaver in a cluster (issue 20: "/healthz and the console show which
process owns what"): two real Apps on one PostgreSQL store, each holding a chat whose
turn is running; the console of the first shows both processes, their chats and
leaderships, and which process answers each chat.  Alone on SQLite neither appears."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bridge.app import App
from bridge.config.watch import LiveConfig
from tests.channels.test_whatsapp_fake import until
from tests.console_web.conftest import API_KEY, BOT_TOKEN, CONFIG, WEBHOOK_SECRET, serving
from tests.console_web.test_pages import get, text_of
from tests.core.helpers import FakeRouter, RecordingChannel, group

HANG_GUARD_S = 20.0


def _config_file(tmp_path: Path, name: str, url: str) -> Path:
    path = tmp_path / f"{name}.json5"
    text = CONFIG % {"data": tmp_path / name, "key": API_KEY, "bot": BOT_TOKEN,
                     "hook": WEBHOOK_SECRET}
    path.write_text(text.replace("  health: {enabled: false},",
                                 f'  health: {{enabled: false}},\n  store: {{url: "{url}",'
                                 " leaseSeconds: 3},"), "utf-8")
    return path


@pytest.fixture
async def pair(tmp_path, pg_url):
    """(console of A, app B, release): both routers hold every turn until released."""
    release = asyncio.Event()

    async def held(_ref, req) -> str:
        await release.wait()
        return "done"

    apps: list[App] = []
    routers: list[FakeRouter] = []
    try:
        for name in ("a", "b"):
            live = LiveConfig.load(_config_file(tmp_path, name, pg_url))
            routers.append(FakeRouter(live.current, held))
            app = App(live, channels=[RecordingChannel("telegram")], router=routers[-1])
            await app.start()
            apps.append(app)
        a, b = apps
        async with serving(a, None, a.channels[0], routers[0], None) as console:
            yield console, b, release
    finally:
        release.set()
        for app in apps:
            await app.stop(grace=0)


async def test_the_console_shows_which_process_answers_what(pair):
    console, b, release = pair
    a = console.app
    await console.login()
    a_id, b_id = a.cluster_status()["process"], b.cluster_status()["process"]
    assert a_id != b_id
    await a.core.accept(group("hold on", chat="-1001"))
    await b.core.accept(group("hold on", chat="-2002"))
    await until(lambda: a._coord.owns("telegram:default:group:-1001")
                and b._coord.owns("telegram:default:group:-2002"), HANG_GUARD_S)
    await until(lambda: b_id in [p["id"] for p in a.cluster_status()["peers"]], HANG_GUARD_S)

    page = await get(console, "/")
    assert 'id="h-cluster"' in page
    visible = " ".join(text_of(page).split())
    assert f"{a_id} (this one)" in visible and b_id in visible
    assert re.search(rf'data-chats="{re.escape(a_id)}">1<', page)
    assert re.search(rf'data-chats="{re.escape(b_id)}">1<', page)

    chats = await get(console, "/chats")
    assert "Answered by" in chats
    assert re.search(r'data-owner="telegram:-1001">' + re.escape(a_id) + r" \(this one\)<",
                     chats)
    assert re.search(r'data-owner="telegram:-2002">' + re.escape(b_id) + "<", chats)

    release.set()
    await a.core.wait_idle()
    await b.core.wait_idle()


async def test_alone_on_sqlite_there_is_no_cluster_section(console):
    await console.login()
    assert console.app.cluster_status()["mode"] == "single"
    assert 'id="h-cluster"' not in await get(console, "/")
    assert "Answered by" not in await get(console, "/chats")
