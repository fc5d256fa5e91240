"""A conversation core over a real store, with the fake router (``harness``) or the real
router in front of the fake model server (``live``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bridge.config.schema import Config
from bridge.conversation import ConversationCore
from bridge.models.router import ModelRouter
from bridge.store import Store
from bridge.usage.budgets import BudgetGuard
from bridge.usage.record import recorder_for
from tests.core.conftest import Harness
from tests.core.helpers import RecordingChannel, make_config
from tests.fakes.model_server import FakeModelServer


@pytest.fixture
async def harness(tmp_path):
    h = Harness(tmp_path, make_config(tmp_path))
    yield h
    await h.stop()


def live_config(tmp_path, server: FakeModelServer, **sections: Any) -> Config:
    """Providers ``local`` (m, free) and ``hosted`` (m, priced) on the fake server,
    speaking Chat Completions; ``local/m`` first, ``hosted/m`` the fallback."""
    providers = {
        "local": {"baseUrl": server.base_url, "api": "openai-completions",
                  "models": [{"id": "m"}]},
        "hosted": {"baseUrl": server.base_url, "api": "openai-completions",
                   "models": [{"id": "m", "cost": {"input": 3.0, "output": 15.0,
                                                   "cacheRead": 0.3}}]},
    }
    base: dict[str, Any] = {
        "models": {"mode": "replace", "providers": providers},
        "agents": {"defaults": {"model": {"primary": "local/m", "fallbacks": ["hosted/m"]},
                                "models": {}}},
    }
    for key, value in sections.items():
        base[key] = value
    return make_config(tmp_path, **base)


@dataclass
class Live:
    """The real router (with provider budgets) over the fake model server."""

    tmp_path: Any
    server: FakeModelServer
    config: Config
    store: Store | None = None
    core: ConversationCore | None = None
    router: ModelRouter | None = None
    guard: BudgetGuard | None = None
    channel: RecordingChannel | None = None
    session: aiohttp.ClientSession | None = None
    events: list = field(default_factory=list)

    async def start(self, config: Config | None = None) -> ConversationCore:
        if config is not None:
            self.config = config
        self.store = await Store.open(self.tmp_path / "palaver.db")
        self.session = self.session or aiohttp.ClientSession()
        self.guard = BudgetGuard(lambda: self.config, recorder_for(self.store))
        self.router = ModelRouter(lambda: self.config, session=self.session, budget=self.guard)
        self.channel = RecordingChannel()
        self.core = ConversationCore(self.store, lambda: self.config, self.router,
                                     channels=[self.channel])
        self.core.add_observer(self.events.append)
        await self.channel.start(self.core)
        await self.core.start()
        return self.core

    async def say(self, inbound):
        status = await self.core.accept(inbound)
        await self.core.wait_idle()
        return status

    async def restart(self) -> None:
        await self.stop(keep_session=True)
        await self.start()

    async def stop(self, *, keep_session: bool = False) -> None:
        if self.core is not None:
            await self.core.stop(grace=1)
            self.core = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.session is not None and not keep_session:
            await self.session.close()
            self.session = None


@pytest.fixture
async def live(tmp_path):
    async with FakeModelServer() as server:
        bot = Live(tmp_path, server, live_config(tmp_path, server))
        yield bot
        await bot.stop()
