"""Shared fixtures.  Nothing in the test suite reaches the internet."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Each test gets its own HOME and no ambient credentials or config."""
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY",
                "TELEGRAM_BOT_TOKEN", "PALAVER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    yield


# The fakes most end-to-end tests stand on (a module may define its own instead).


@pytest.fixture
async def fake():
    """A fake Telegram Bot API on 127.0.0.1."""
    from tests.fakes.telegram_api import FakeBotAPI

    async with FakeBotAPI() as server:
        yield server


@pytest.fixture
async def models():
    """A fake model server on 127.0.0.1 (Responses, Chat Completions, Messages)."""
    from tests.fakes.model_server import FakeModelServer

    async with FakeModelServer() as server:
        yield server


@pytest.fixture
async def run_app():
    """``await run_app(config)``: a started App, stopped when the test ends."""
    from bridge.app import App

    apps: list[App] = []

    async def start(config) -> App:
        app = App(config)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=0)
