"""Live replies (issue 17): what a chat sees while its answer is being written, and /stop.

- :class:`ActiveTurns` is the /stop registry: the door cancels a session's *model phase*
  (compaction and the model call), never the worker nor a delivery in progress.
- :class:`TurnReactions` is what a turn tells the ack reactions on its terminal paths
  (implemented in ``bridge/reactions.py``; the default does nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from bridge.store.records import StoredMessage

T = TypeVar("T")


@dataclass(slots=True)
class _Running:
    turn_id: int
    task: asyncio.Task[Any]


class ActiveTurns:
    """The model phase running in each session, so ``/stop`` can cancel it.

    The entry exists only while the phase runs: once the reply is stored, ``stop`` says
    nothing is running and a delivery in progress is never cut.
    """

    def __init__(self) -> None:
        self._running: dict[str, _Running] = {}

    async def run(self, key: str, turn_id: int, coro: Awaitable[T]) -> T:
        """Run ``coro`` as a child task under ``key`` and return its result.

        A ``stop(key)`` cancels only the child: the caller sees ``CancelledError`` while
        its own task is not being cancelled (``asyncio.current_task().cancelling()`` is
        0), which is how it tells /stop from shutdown.  Cancelling the caller cancels the
        child too (and waits for it to unwind)."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        entry = _Running(turn_id, task)
        self._running[key] = entry
        try:
            # Awaiting a task directly: cancelling the caller cancels the child and
            # resumes the caller once the child has unwound.
            return await task
        finally:
            if self._running.get(key) is entry:
                del self._running[key]

    def stop(self, key: str) -> bool:
        """Cancel the model phase running under ``key``; False when none is."""
        entry = self._running.get(key)
        if entry is None or entry.task.done():
            return False
        entry.task.cancel("stop")
        return True

    def running(self, key: str) -> int | None:
        """The turn id whose model phase runs under ``key``, or None."""
        entry = self._running.get(key)
        if entry is None or entry.task.done():
            return None
        return entry.turn_id


class TurnReactions(Protocol):
    """A turn's terminal paths, as the ack reactions need them (synchronous: the
    implementation spawns its own side tasks and never blocks a turn)."""

    def failed(self, messages: Sequence[StoredMessage]) -> None:
        """Every model failed for these messages: show the failure mark."""
        ...

    def clear(self, messages: Sequence[StoredMessage]) -> None:
        """These messages will get no reply (e.g. /stop): remove the ack reaction."""
        ...


class NoReactions:
    """The default :class:`TurnReactions`: nothing to show."""

    def failed(self, messages: Sequence[StoredMessage]) -> None:
        return None

    def clear(self, messages: Sequence[StoredMessage]) -> None:
        return None
