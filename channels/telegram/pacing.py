"""Pacing of the bot's sends within Telegram's flood limits.

Telegram answers bursts with ``429 Too Many Requests: retry after N``.  Its published
limits: about one message a second in one chat, 20 a minute in a group, about 30 a
second over all chats.  :class:`Pacer` hands out send slots so a long reply stays
within them, per chat and overall, and a 429's ``retry_after`` holds that chat until it
has passed.

Why not python-telegram-bot's ``AIORateLimiter``: it does not pace private chats at all
(only groups and the overall rate), it hooks into ``Bot`` methods, which the adapter
bypasses for its sends (``channels.telegram.http.post``), it would add the ``aiolimiter``
dependency, and it cannot run on an injected clock (tests pace without sleeping).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """Send slots per chat (a short burst, then a steady pace) and overall.

    Per chat it is the generic cell rate algorithm: ``burst`` sends may go at once, after
    that one every ``interval`` seconds, so a reply of a few chunks arrives together and
    a long one is paced.  Slots are reserved before waiting, so concurrent senders queue.
    """

    def __init__(self, *, chat_interval: float = 1.0, chat_burst: int = 5,
                 group_interval: float = 60 / 17, group_burst: int = 3,
                 overall_interval: float = 1 / 30, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.chat_interval = chat_interval  # private chats: ~1 message/s
        self.chat_burst = max(chat_burst, 1)
        # Groups: 20 a minute.  A burst of 3 then one every 60/17 s: any 60 s holds at
        # most floor((60 + 2 * 60/17) / (60/17)) = 19 sends.
        self.group_interval = group_interval
        self.group_burst = max(group_burst, 1)
        self.overall_interval = overall_interval  # all chats: ~30/s
        self.clock = clock
        self.sleep = sleep
        # Per chat: the "theoretical arrival time" of the next send at the steady pace.
        self._tat: dict[int, float] = {}
        self._next_any = 0.0

    def _shape(self, group: bool) -> tuple[float, float]:
        """(interval, tolerance): how far ahead of the steady pace a send may go."""
        if group:
            return self.group_interval, (self.group_burst - 1) * self.group_interval
        return self.chat_interval, (self.chat_burst - 1) * self.chat_interval

    async def wait(self, chat_id: int, *, group: bool) -> float:
        """Wait for this chat's next send slot; returns the seconds waited."""
        now = self.clock()
        interval, tolerance = self._shape(group)
        tat = max(self._tat.get(chat_id, now), now)
        at = max(now, tat - tolerance, self._next_any)
        # Reserved before sleeping, so the next sender queues behind this one.
        self._tat[chat_id] = max(tat, at) + interval
        self._next_any = at + self.overall_interval
        self._prune(now)
        wait = at - now
        if wait > 0:
            await self.sleep(wait)
        return max(wait, 0.0)

    def try_take(self, chat_id: int, *, group: bool, keep: int = 1) -> bool:
        """Take this chat's next slot only if it is free now and ``keep`` more would still
        be free right after (so a preview never spends what the final reply needs); the
        overall pace too.  Never sleeps; False leaves everything as it was.

        The GCRA of :meth:`wait`: a send may go at ``now`` when the chat's theoretical
        arrival time is within the burst tolerance of it.
        """
        now = self.clock()
        interval, tolerance = self._shape(group)
        tat = max(self._tat.get(chat_id, now), now)
        # This slot and ``keep`` after it: the last of them must be due by now.
        if tat + max(keep, 0) * interval - tolerance > now or self._next_any > now:
            return False
        self._tat[chat_id] = tat + interval
        self._next_any = now + self.overall_interval
        self._prune(now)
        return True

    def hold(self, chat_id: int, seconds: float, *, group: bool = False) -> None:
        """Telegram said ``retry_after`` = ``seconds`` for this chat: its next slot is
        not before that has passed (and the burst allowance is spent)."""
        _, tolerance = self._shape(group)
        until = self.clock() + seconds + tolerance
        self._tat[chat_id] = max(self._tat.get(chat_id, 0.0), until)

    def _prune(self, now: float) -> None:
        if len(self._tat) > 10_000:
            self._tat = {c: t for c, t in self._tat.items() if t > now}
