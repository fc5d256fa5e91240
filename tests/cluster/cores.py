"""Several processes of a cluster inside one test process: a store, a coordinator, a
channel and a ConversationCore each, on one PostgreSQL database (as two ``palaver run``
would have), with no background reap or sweep (a test that needs one runs it by hand)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.conversation import ConversationCore
from bridge.media import MediaStore
from bridge.store import Store
from bridge.store.coord import PgCoordinator, application_name
from bridge.store.sql import all_
from tests.core.helpers import FakeRouter, RecordingChannel

NEVER = 3600.0  # no background reap or sweep
HANG_GUARD_S = 30.0  # only so that a broken test fails instead of hanging


@dataclass
class Node:
    store: Store
    coord: PgCoordinator
    core: ConversationCore
    channel: Any  # a RecordingChannel, or the test's own
    media: MediaStore | None = None


@contextlib.asynccontextmanager
async def two_cores(config, pg_url: str, behaviours: Sequence[Any],
                    channels: Sequence[Any] | None = None,
                    media_root: Path | None = None) -> AsyncIterator[list[Node]]:
    """One started core per model behaviour (``FakeRouter``'s), on one PostgreSQL
    database; with ``media_root``, each has its own media store
    (``media_root/<a|b|...>/media``, shared through the database as ``palaver run``'s
    is).  Stopped and closed afterwards."""
    nodes: list[Node] = []
    try:
        for i, behaviour in enumerate(behaviours):
            app = application_name()
            store = await Store.open_url(pg_url, application_name=app)
            coord = PgCoordinator(store, lease_seconds=30.0, app_name=app,
                                  reap_every_s=NEVER, sweep_every_s=NEVER)
            await coord.start()
            media = (None if media_root is None else
                     MediaStore.for_store(media_root / "abcdefgh"[i] / "media", store))
            channel = channels[i] if channels is not None else RecordingChannel()
            core = ConversationCore(store, config, FakeRouter(config, behaviour),
                                    channels=[channel], coordinator=coord, media=media)
            await core.start()
            nodes.append(Node(store, coord, core, channel, media))
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.core.stop(grace=0)
            with contextlib.suppress(Exception):
                await node.coord.stop()
            with contextlib.suppress(Exception):
                await node.store.close()


def slow_model() -> tuple[asyncio.Event, asyncio.Event, object]:
    """``(release, called, behaviour)``: a model that answers once released."""
    release, called = asyncio.Event(), asyncio.Event()

    async def slow(_ref, req) -> str:
        called.set()
        await release.wait()
        return "the slow answer"

    return release, called, slow


def rows_of(key: str, sql: str):
    """A read body: ``sql``'s rows with ``key`` as its one parameter."""
    return (yield all_(sql, key))
