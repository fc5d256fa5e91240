"""Acknowledgement reactions: 👀 on a message the bot will answer, gone once it has.

Policy lives here, the channels only set and remove an emoji (``Channel.react``):

- **When:** an admitted chat message (not a command) gets ``ackReaction`` right after it
  is stored, if ``ackReactionScope`` covers it (``direct``: direct chats; ``group-mentions``:
  group messages that name the bot; ``all``) and its channel has ``reactions``.  ``""``
  (per channel, group, topic or direct entry) turns it off.
- **Removed** when the turn's answer is delivered (the outbox's ``on_delivered`` hook,
  also for a reply delivered hours later by a retry) and when ``/stop`` cancels the turn;
  **replaced** by ``ackFailureReaction`` when every model failed (``""``: just removed).
- **Never in the way:** every call is a side task (``accept`` does not wait for it), the
  calls for one message run in order (a slow 👀 is never applied after its removal), and
  a failure is a debug line: a reaction never touches a reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from bridge.config.resolve import chat_setting
from bridge.envelope import ChatAddress, ChatKind, Inbound
from bridge.store.records import Direction, MessageKind, StoredMessage

if TYPE_CHECKING:
    from bridge.config.schema import Config
    from bridge.ports import Channel
    from bridge.store import Store

log = logging.getLogger(__name__)

# Runs a side task the core owns; None when it cannot (the core is stopping).
# Acknowledged messages remembered for their removal (beyond: the config decides).
ACKED_REMEMBERED = 10_000

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[Any] | None"]


class AckReactions:
    """The core's reactions (:class:`bridge.live.TurnReactions`): set at the door, cleared
    or marked failed by the turn and the outbox.

    ``route(address)`` is the attached channel serving a chat; ``spawn(coro)`` runs a
    side task the core owns (cancelled on stop).
    """

    def __init__(self, store: Store, config: Callable[[], Config],
                 route: Callable[[ChatAddress], Channel | None], spawn: Spawn) -> None:
        self._store = store
        self._config = config
        self._route = route
        self._spawn = spawn
        # The last reaction call of each message, so the next one runs after it.
        self._last: dict[tuple[str, str, str], asyncio.Task[Any]] = {}
        # Messages acknowledged lately: cleared even if the config changed since.
        self._acked_lately: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lookups: set[asyncio.Task[Any]] = set()  # inbound_of_turn reads in flight

    # -- the policy ----------------------------------------------------------------

    def _channel(self, address: ChatAddress) -> Channel | None:
        channel = self._route(address)
        if channel is None or not channel.capabilities.reactions:
            return None
        return channel

    def _emoji(self, address: ChatAddress, sender_id: str | None, name: str) -> str:
        value = chat_setting(self._config(), address.channel, name,
                             chat_kind=address.chat_kind.value, chat_id=address.chat_id,
                             sender_id=sender_id, thread_id=address.thread_id)
        return value if isinstance(value, str) else ""

    def _in_scope(self, address: ChatAddress, mentioned: bool) -> bool:
        chan = self._config().channel(address.channel)
        scope = getattr(chan, "ackReactionScope", None)
        if scope is None:  # not a configured messaging channel (the console)
            return False
        direct = address.chat_kind is ChatKind.DIRECT
        if scope == "direct":
            return direct
        if scope == "group-mentions":
            return not direct and mentioned
        return True

    def _acked(self, msg: StoredMessage) -> bool:
        """Whether ``msg`` got an ack at the door (this process saw it, or the config
        says it would have: after a restart)."""
        if msg.direction is not Direction.IN or msg.kind is MessageKind.COMMAND or msg.context:
            return False
        if not msg.platform_message_id:
            return False
        a = msg.address
        if (a.channel, a.account, msg.platform_message_id) in self._acked_lately:
            return True
        return (self._in_scope(a, msg.mentioned)
                and bool(self._emoji(a, msg.sender_id, "ackReaction")))

    # -- the door ------------------------------------------------------------------

    def acknowledge(self, inbound: Inbound) -> None:
        """``inbound`` was stored to be answered: set the ack reaction (in the background)."""
        if not self._in_scope(inbound.address, inbound.mentioned):
            return
        emoji = self._emoji(inbound.address, inbound.sender_id, "ackReaction")
        if emoji and self._react(inbound.address, inbound.message_id, emoji):
            a = inbound.address
            self._acked_lately[(a.channel, a.account, inbound.message_id)] = None
            while len(self._acked_lately) > ACKED_REMEMBERED:
                self._acked_lately.popitem(last=False)

    # -- TurnReactions ---------------------------------------------------------------

    def failed(self, messages: Sequence[StoredMessage]) -> None:
        """Every model failed for ``messages``: the failure mark replaces the ack."""
        for msg in messages:
            if not self._acked(msg):
                continue
            assert msg.platform_message_id is not None
            mark = self._emoji(msg.address, msg.sender_id, "ackFailureReaction")
            self._react(msg.address, msg.platform_message_id, mark)

    def clear(self, messages: Sequence[StoredMessage]) -> None:
        """``messages`` are done with (answered, stopped): remove their ack."""
        for msg in messages:
            if self._acked(msg):
                assert msg.platform_message_id is not None
                a = msg.address
                self._acked_lately.pop((a.channel, a.account, msg.platform_message_id), None)
                self._react(a, msg.platform_message_id, "")

    # -- the outbox's hook -------------------------------------------------------------

    def delivered(self, reply: StoredMessage) -> None:
        """``reply`` went out: an answer clears the ack of the messages it answers (an
        apology keeps the failure mark the turn set)."""
        if reply.turn_id is None or reply.kind is not MessageKind.CHAT:
            return
        if self._channel(reply.address) is None:
            return
        task = self._spawn(self._clear_turn(reply.turn_id))
        if task is not None:
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)

    async def _clear_turn(self, turn_id: int) -> None:
        try:
            messages = await self._store.inbound_of_turn(turn_id)
        except Exception as exc:
            log.debug("reactions: inbound of turn %d not read: %s", turn_id, exc)
            return
        self.clear(messages)

    # -- the calls ---------------------------------------------------------------------

    def _react(self, address: ChatAddress, message_id: str, emoji: str) -> bool:
        """Ask ``address``'s channel to set ``emoji`` (after the message's earlier calls);
        whether the call was started."""
        channel = self._channel(address)
        if channel is None:
            return False
        key = (address.channel, address.account, message_id)
        previous = self._last.get(key)

        async def call() -> None:
            if previous is not None:
                await asyncio.wait([previous])  # its outcome is its own
            try:
                await channel.react(address, message_id, emoji)
            except Exception as exc:
                log.debug("reactions: %s %r on %s message %s failed: %s",
                          "setting" if emoji else "removing", emoji, address.channel,
                          message_id, exc)

        task = self._spawn(call())
        if task is None:
            return False
        self._last[key] = task

        def forget(done: asyncio.Task[Any]) -> None:
            if self._last.get(key) is done:
                del self._last[key]

        task.add_done_callback(forget)
        return True

    async def idle(self) -> None:
        """Until every reaction call started so far has returned (tests)."""
        while self._last or self._lookups:
            await asyncio.gather(*self._last.values(), *self._lookups,
                                 return_exceptions=True)
