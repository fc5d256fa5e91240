"""A conversation core over a real store, a fake router and a recording channel."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bridge.config.schema import Config
from bridge.conversation import ConversationCore, TurnEvent
from bridge.store import Store
from tests.core.helpers import FakeRouter, RecordingChannel, make_config


@dataclass
class Harness:
    tmp_path: object
    config: Config
    store: Store | None = None
    core: ConversationCore | None = None
    router: FakeRouter | None = None
    channel: RecordingChannel | None = None
    events: list = field(default_factory=list)

    async def start(self, *, behaviour=None, config: Config | None = None,
                    channel: RecordingChannel | None = None, **core_options
                    ) -> ConversationCore:
        """(Re)start a core over the same database, as a restarted process would.

        ``core_options`` go to ConversationCore (e.g. short ``send_retry_delays``).
        """
        if config is not None:
            self.config = config
        self.store = await Store.open(self.tmp_path / "palaver.db")
        self.router = FakeRouter(lambda: self.config, behaviour)
        self.channel = channel or RecordingChannel()
        self.core = ConversationCore(self.store, lambda: self.config, self.router,
                                     channels=[self.channel], **core_options)
        self.core.add_observer(self.events.append)
        await self.channel.start(self.core)
        await self.core.start()
        return self.core

    async def crash(self) -> None:
        """Drop the core without a graceful stop (workers cancelled mid-turn)."""
        assert self.core is not None and self.store is not None
        await self.core.stop(grace=0)
        await self.store.close()

    async def stop(self) -> None:
        if self.core is not None:
            await self.core.stop(grace=1)
        if self.store is not None:
            await self.store.close()

    async def say(self, inbound):
        status = await self.core.accept(inbound)
        await self.core.wait_idle()
        return status

    def turns(self) -> list[TurnEvent]:
        return [e for e in self.events if isinstance(e, TurnEvent)]


@pytest.fixture
async def harness(tmp_path):
    h = Harness(tmp_path, make_config(tmp_path))
    yield h
    await h.stop()
