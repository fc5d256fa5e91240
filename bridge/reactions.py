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
- **One process per chat.**  With several processes on one store, every reaction of a
  chat is set by the process that owns it (the one that answers), so their order holds:
  a process that stores a message for a chat another one owns sets no 👀; the owner,
  woken by the stored message's notification, reads the chat's waiting messages and
  acknowledges those it has not (:meth:`AckReactions.acknowledge_waiting`) — what to
  acknowledge is derived from the stored rows, never from another process's memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bridge.commands import is_command
from bridge.config.resolve import chat_setting
from bridge.envelope import ChatAddress, ChatKind, Inbound
from bridge.store.records import Direction, MessageKind, MessageStatus, StoredMessage
from bridge.store.sql import Body, all_

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
    side task the core owns (cancelled on stop); ``attached()`` the channels attached
    (None: any may react).
    """

    def __init__(self, store: Store, config: Callable[[], Config],
                 route: Callable[[ChatAddress], Channel | None], spawn: Spawn, *,
                 attached: Callable[[], Iterable[Channel]] | None = None) -> None:
        self._store = store
        self._attached = attached
        self._config = config
        self._route = route
        self._spawn = spawn
        # The last reaction call of each message, so the next one runs after it.
        self._last: dict[tuple[str, str, str], asyncio.Task[Any]] = {}
        # Messages acknowledged lately: cleared even if the config changed since.
        self._acked_lately: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        # Messages whose ack was cleared or marked failed lately: never acknowledged
        # again (a stored message read for its ack after its answer went out).
        self._done_lately: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lookups: set[asyncio.Task[Any]] = set()  # store reads in flight

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
            _remember(self._acked_lately, (a.channel, a.account, inbound.message_id))

    # -- the owner, for messages another process stored ----------------------------

    def may_acknowledge(self) -> bool:
        """Could any attached channel show an ack (else no lookup is worth its query)."""
        if self._attached is None:
            return True
        return any(c.capabilities.reactions and self._configured(c.name)
                   for c in self._attached())

    def _configured(self, channel: str) -> bool:
        """Whether any chat of ``channel`` may get an ack: its ``ackReaction``, or one of
        a group's, topic's or direct chat's, is not ``""``."""
        chan = self._config().channel(channel)
        if getattr(chan, "ackReaction", "") != "":
            return True
        for group in getattr(chan, "groups", {}).values():
            if group.ackReaction or any(t.ackReaction for t in group.topics.values()):
                return True
        return any(entry.ackReaction for entry in getattr(chan, "direct", {}).values())

    def stored_elsewhere(self, session_key: str) -> None:
        """Another process stored messages in chat ``session_key``, which this process
        owns: acknowledge them (in the background, see :meth:`acknowledge_waiting`)."""
        if not self.may_acknowledge():
            return
        self._track(self._spawn(self._acknowledge_quietly(session_key)))

    async def _acknowledge_quietly(self, session_key: str) -> None:
        await self.acknowledge_waiting(session_key)

    async def acknowledge_waiting(self, session_key: str) -> int:
        """This process owns chat ``session_key`` and another process stored messages in
        it (the notification, or the sweep): acknowledge its waiting messages that have
        no ack from here yet and are not done with.  Returns how many got one; a failure
        to read is a debug line (the ack is cosmetic)."""
        try:
            waiting = await self._store.read_with(_waiting_inbound(session_key))
        except Exception as exc:
            log.debug("reactions: waiting messages of %s not read: %s", session_key, exc)
            return 0
        return self.acknowledge_stored(waiting)

    def acknowledge_stored(self, messages: Sequence[StoredMessage]) -> int:
        """Acknowledge stored ``messages`` (being answered, or waiting) that have no ack
        from this process yet and are not done with: e.g. a claim's, when another
        process stored them.  Returns how many got one."""
        count = 0
        for msg in messages:
            if msg.context or not msg.platform_message_id or is_command(msg.text):
                continue
            a = msg.address
            key = (a.channel, a.account, msg.platform_message_id)
            if key in self._acked_lately or key in self._done_lately:
                continue
            if not self._in_scope(a, msg.mentioned):
                continue
            emoji = self._emoji(a, msg.sender_id, "ackReaction")
            if emoji and self._react(a, msg.platform_message_id, emoji):
                _remember(self._acked_lately, key)
                count += 1
        return count

    # -- TurnReactions ---------------------------------------------------------------

    def failed(self, messages: Sequence[StoredMessage]) -> None:
        """Every model failed for ``messages``: the failure mark replaces the ack."""
        for msg in messages:
            if not self._acked(msg):
                continue
            assert msg.platform_message_id is not None
            a = msg.address
            _remember(self._done_lately, (a.channel, a.account, msg.platform_message_id))
            mark = self._emoji(msg.address, msg.sender_id, "ackFailureReaction")
            self._react(msg.address, msg.platform_message_id, mark)

    def clear(self, messages: Sequence[StoredMessage]) -> None:
        """``messages`` are done with (answered, stopped): remove their ack."""
        for msg in messages:
            if self._acked(msg):
                assert msg.platform_message_id is not None
                a = msg.address
                key = (a.channel, a.account, msg.platform_message_id)
                self._acked_lately.pop(key, None)
                _remember(self._done_lately, key)
                self._react(a, msg.platform_message_id, "")

    # -- the outbox's hook -------------------------------------------------------------

    def delivered(self, reply: StoredMessage) -> None:
        """``reply`` went out: an answer clears the ack of the messages it answers (an
        apology keeps the failure mark the turn set)."""
        if reply.turn_id is None or reply.kind is not MessageKind.CHAT:
            return
        if self._channel(reply.address) is None:
            return
        self._track(self._spawn(self._clear_turn(reply.turn_id)))

    def _track(self, task: asyncio.Task[Any] | None) -> None:
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


def _remember(recent: OrderedDict[tuple[str, str, str], None],
              key: tuple[str, str, str]) -> None:
    recent[key] = None
    recent.move_to_end(key)
    while len(recent) > ACKED_REMEMBERED:
        recent.popitem(last=False)


def _waiting_inbound(session_key: str) -> Body[list[StoredMessage]]:
    """A chat's inbound messages waiting for their answer or being answered."""
    from bridge.store.records import message_from_row

    rows = yield all_(
        "SELECT * FROM messages WHERE session_key = ? AND direction = 'in' AND status IN"
        " (?, ?) AND context = 0 ORDER BY id", session_key,
        MessageStatus.RECEIVED.value, MessageStatus.PROCESSING.value)
    return [message_from_row(r) for r in rows]
