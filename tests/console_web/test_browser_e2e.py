"""End to end in a real browser: Debian's Chromium driven by Playwright.

FakeBotAPI <- real PTB channel <- App (LiveConfig on a file) -> two FakeModelServers, and
the console served exactly as ``palaver run`` serves it (``start_console(app, live)``).
The browser logs in through a one-time link, reads the overview (and sees it update
live), moves a group to the second model on the Chats page — the group's next message is
answered by that model — and approves a pairing code: the requester gets the notice.

Screenshots of every page go to ``$PALAVER_CONSOLE_SHOTS`` (default: a temp dir; the path
is printed).  Playwright never downloads a browser here: it launches /usr/bin/chromium.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from bridge.app import App
from bridge.config.watch import LiveConfig
from bridge.console_web.wiring import start_console
from channels.telegram import TelegramChannel
from tests.fakes.model_server import FakeModelServer
from tests.fakes.telegram_api import FakeBotAPI

CHROMIUM = os.environ.get("PALAVER_CHROMIUM", "/usr/bin/chromium")
# CI installs both (.ci/run); there a missing browser is a failure, not a skip.
if os.environ.get("CI") and not (Path(CHROMIUM).exists()
                                 and importlib.util.find_spec("playwright") is not None):
    raise RuntimeError(f"CI: the console's browser test needs Playwright and {CHROMIUM}")
playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM}"),
    pytest.mark.timeout(180),
]

GROUP = -100777
REQUESTER = 4242


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(tmp_path: Path, fake: FakeBotAPI, alpha: FakeModelServer,
                  beta: FakeModelServer, port: int) -> Path:
    path = tmp_path / "palaver.json5"
    path.write_text(f"""// Palaver, as an operator writes it
{{
  dataDir: "{tmp_path / 'data'}",
  models: {{
    mode: "replace",
    providers: {{
      alpha: {{baseUrl: "{alpha.url_for('openai-completions')}", api: "openai-completions",
               models: [{{id: "m", contextWindow: 32000, maxTokens: 1000}}]}},
      beta: {{baseUrl: "{beta.url_for('openai-completions')}", api: "openai-completions",
              models: [{{id: "m", contextWindow: 32000, maxTokens: 1000}}]}},
    }},
  }},
  agents: {{defaults: {{model: "alpha/m"}}}},
  channels: {{
    telegram: {{
      botToken: "{fake.token}",
      apiRoot: "{fake.url}",
      dmPolicy: "pairing",       // strangers get a code
      groupPolicy: "open",
      groups: {{"*": {{requireMention: false}}}},
    }},
  }},
  health: {{enabled: false}},
  console: {{port: {port}}},
}}
""", "utf-8")
    return path


def _shots_dir() -> Path:
    where = os.environ.get("PALAVER_CONSOLE_SHOTS")
    path = Path(where) if where else Path(tempfile.gettempdir()) / "palaver-console-shots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch):
    monkeypatch.setattr(TelegramChannel, "poll_timeout", 1)
    monkeypatch.setattr(TelegramChannel, "typing_delay", 0)


async def test_console_in_a_real_browser(tmp_path):
    shots = _shots_dir()
    print(f"\nconsole screenshots: {shots}")
    async with FakeBotAPI() as fake, FakeModelServer(models=["m"]) as alpha, \
            FakeModelServer(models=["m"]) as beta:
        alpha.default("answer from ALPHA")
        beta.default("answer from BETA")
        path = _write_config(tmp_path, fake, alpha, beta, _free_port())
        live = LiveConfig.load(path)
        app = App(live)
        await app.start()
        server = await start_console(app, live)
        assert server is not None
        try:
            await _drive(app, server, fake, alpha, beta, shots, path)
        finally:
            await server.stop()
            await app.stop(grace=0)
    if os.environ.get("PALAVER_UPDATE_DOCS_SHOT"):
        shutil.copy(shots / "overview.png", Path(__file__).parents[2] / "docs" / "console.png")


async def _drive(app, server, fake, alpha, beta, shots: Path, config_path: Path) -> None:
    gail = fake.user(11, "Gail")
    fake.push_text(GROUP, gail, "first question")
    (first,) = await fake.wait_for_sent(1, timeout=15)
    assert first.chat_id == GROUP and first.text == "answer from ALPHA"

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = await browser.new_context(viewport={"width": 1100, "height": 900})
            page = await context.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("dialog", lambda d: d.accept())  # the confirmations: yes

            # -- log in: the link works once ------------------------------------------
            link = server.login_url()
            await page.goto(link)
            await page.wait_for_selector("h1:has-text('Overview')")
            assert page.url.rstrip("/") == server.url
            cookies = await context.cookies()
            (cookie,) = [c for c in cookies if c["name"] == "palaver_console"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            health = page.locator("td[data-channel='telegram']")
            await playwright_api.expect(health).to_have_text("connected")
            assert await page.locator("text=alpha/m").count() >= 1

            # live: a new turn shows up without a reload
            turns = page.locator("[data-stat='turns']")
            before = int(await turns.inner_text())
            fake.push_text(GROUP, gail, "second question")
            await fake.wait_for_sent(2, timeout=15)
            await playwright_api.expect(turns).to_have_text(str(before + 1), timeout=15_000)
            await playwright_api.expect(page.locator("#live-state")).to_contain_text("Live")
            await page.screenshot(path=str(shots / "overview.png"), full_page=True)

            # a used link is refused in another browser context
            other = await browser.new_context()
            p2 = await other.new_page()
            resp = await p2.goto(link)
            assert resp is not None and resp.status == 403
            assert "used already" in await p2.content()
            await other.close()

            # -- the group moves to beta on the Chats page ------------------------------
            await page.click("nav >> text=Chats")
            await page.wait_for_selector("h1:has-text('Chats')")
            await page.screenshot(path=str(shots / "chats.png"), full_page=True)
            await page.click(f"a:has-text('telegram:{GROUP}')")
            await playwright_api.expect(page.locator("#current-model")).to_have_text("alpha/m")
            await page.fill("#primary", "beta/m")
            await page.click("button:has-text('Preview change')")
            diff = page.locator("#diff")
            await playwright_api.expect(diff).to_contain_text(f'"{GROUP}": "beta/m"')
            await page.screenshot(path=str(shots / "chat-preview.png"), full_page=True)
            assert "beta/m" not in await asyncio.to_thread(config_path.read_text)  # nothing written yet
            await page.click("#save")
            await playwright_api.expect(page.locator(".flash.ok")).to_contain_text("Saved.")
            await playwright_api.expect(page.locator("#current-model")).to_have_text("beta/m")
            await page.screenshot(path=str(shots / "chat-saved.png"), full_page=True)
            assert "// Palaver, as an operator writes it" in await asyncio.to_thread(
                config_path.read_text)

            # the group's next message is answered by the new model
            fake.push_text(GROUP, gail, "third question")
            sent = await fake.wait_for_sent(3, timeout=15)
            assert sent[-1].chat_id == GROUP and sent[-1].text == "answer from BETA"
            assert beta.requests and beta.requests[-1].last_user_text().endswith(
                "third question")

            # -- pairing: a stranger asks, the operator approves, the stranger is told --
            fake.push_text(REQUESTER, fake.user(REQUESTER, "Rita"), "hello?")
            sent = await fake.wait_for_sent(4, timeout=15)
            code_message = sent[-1]
            assert code_message.chat_id == REQUESTER
            code = re.search(r"pairing code is (\S+)", code_message.text)[1]
            await page.click("nav >> text=Pairing")
            row = page.locator("table.pairing tr", has_text=code)
            await playwright_api.expect(row).to_contain_text("Rita")
            await page.screenshot(path=str(shots / "pairing.png"), full_page=True)
            await row.locator("button.approve").click()
            await playwright_api.expect(page.locator(".flash")).to_contain_text(
                "they were told")
            sent = await fake.wait_for_sent(5, timeout=15)
            assert sent[-1].chat_id == REQUESTER and "approved" in sent[-1].text
            assert await app.store.is_approved("telegram", [str(REQUESTER)])

            # -- the other pages ----------------------------------------------------------
            await page.click("nav >> text=Turns")
            await playwright_api.expect(page.locator("table.turns")).to_contain_text("beta/m")
            await page.screenshot(path=str(shots / "turns.png"), full_page=True)
            await page.click("nav >> text=Models")
            await page.click("#probe")
            await playwright_api.expect(page.locator("#probe-rows")).to_contain_text("alpha/m")
            await page.screenshot(path=str(shots / "models.png"), full_page=True)
            await page.click("nav >> text=Usage")
            await playwright_api.expect(page.locator("h1")).to_have_text("Usage")
            await page.screenshot(path=str(shots / "usage.png"), full_page=True)
            await page.click("nav >> text=Config")
            await playwright_api.expect(page.locator("#config")).to_contain_text('"***"')
            assert fake.token not in await page.content()
            await page.screenshot(path=str(shots / "config.png"), full_page=True)

            # keyboard: the skip link is the first stop and lands on the content
            await page.keyboard.press("Tab")
            focused = await page.evaluate("document.activeElement.textContent")
            assert focused.strip() == "Skip to content"

            # phone width: readable without sideways scrolling of the page itself
            phone = await browser.new_context(viewport={"width": 390, "height": 844})
            p3 = await phone.new_page()
            await p3.goto(server.login_url())
            await p3.wait_for_selector("h1:has-text('Overview')")
            overflow = await p3.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0
            await p3.screenshot(path=str(shots / "overview-phone.png"), full_page=True)
            await phone.close()

            assert not [p for p in problems if "Content Security Policy" in p], problems
        finally:
            await browser.close()
