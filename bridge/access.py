"""Who may talk to the bot: DM policy, allowlists, pairing codes, group mention gating.

The same rules for every channel.  ``AccessControl.check()`` returns a decision; the
conversation core records refused and ignored messages and never sends them to a model.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bridge.cli import EXIT_FAILURE, EXIT_OK
from bridge.commands import changes_chat
from bridge.config.resolve import is_owner
from bridge.config.schema import ChannelConfig, GroupConfig
from bridge.envelope import ChatKind, Inbound
from bridge.store import Store

if TYPE_CHECKING:
    from bridge.config.schema import Config

log = logging.getLogger(__name__)

# No look-alikes: no 0/O, 1/I/L, and no U/V pair either.
PAIRING_ALPHABET = "23456789ABCDEFGHJKMNPQRSTWXYZ"
PAIRING_CODE_LENGTH = 8
PAIRING_TTL_S = 3600.0
PAIRING_MAX_PENDING = 3
# The code is sent when it is created, and once more if the sender writes again at least
# this long afterwards (not on every message: that would let anyone make the bot spam).
PAIRING_REMIND_AFTER_S = 600.0
# The operator's own terminal (``palaver chat``) is always allowed.
OPERATOR_CHANNELS = frozenset({"console"})


class Verdict(StrEnum):
    ALLOW = "allow"
    REFUSE = "refuse"  # recorded as refused (reply, if any, is the pairing code)
    IGNORE = "ignore"  # recorded as ignored (e.g. group message without a mention)


@dataclass(frozen=True, slots=True)
class AccessDecision:
    verdict: Verdict
    reason: str = ""
    reply: str | None = None  # sent to the sender instead of an answer (pairing)
    # Short fixed word for metrics: not_allowed, pairing, pairing_full, dm_disabled,
    # group_not_allowed, group_disabled, channel_disabled, no_mention, command_not_allowed.
    code: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


ALLOW = AccessDecision(Verdict.ALLOW)


def new_pairing_code() -> str:
    """Eight characters from an alphabet without look-alike characters."""
    return "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(PAIRING_CODE_LENGTH))


def pairing_message(code: str, channel: str) -> str:
    return (
        f"Hi! I don't know you yet. Your pairing code is {code}\n"
        f"Ask the operator of this bot to run: palaver pairing approve {channel} {code}\n"
        "(The code is valid for one hour.)"
    )


USERNAME_PINS = "access.username"  # kv namespace: "<channel>:@name" -> sender id


class AccessControl:
    """Decides whether an inbound message may reach a model (reads the live config)."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        *,
        clock: Callable[[], float] = time.time,
        new_code: Callable[[], str] = new_pairing_code,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._new_code = new_code
        self._pins: dict[str, str | None] = {}  # cache of USERNAME_PINS

    async def _allowed(self, allow_from: tuple[str, ...], inbound: Inbound, *,
                       dry_run: bool) -> bool:
        """Does ``allow_from`` admit the sender?

        An ``@username`` entry is resolved when first seen: it is pinned to the numeric id
        of the sender who had that username then, so whoever later takes over a released
        username is not let in.
        """
        if "*" in allow_from:
            return True
        sender = inbound.sender_id.casefold()
        aliases = {a.casefold() for a in inbound.sender_aliases if a}
        for entry in allow_from:
            folded = entry.casefold()
            if folded == sender:
                return True
            if not folded.startswith("@"):
                if folded in aliases:
                    return True
                continue
            key = f"{inbound.address.channel}:{folded}"
            if key not in self._pins:
                self._pins[key] = await self._store.kv_get(USERNAME_PINS, key)
            pinned = self._pins[key]
            if pinned == inbound.sender_id:
                return True  # the pinned account, whatever its username is now
            if folded not in aliases:
                continue
            if pinned is None:
                if dry_run:
                    return True
                await self._store.kv_set(USERNAME_PINS, key, inbound.sender_id)
                self._pins[key] = inbound.sender_id
                log.info("allowFrom %s resolved to %s id %s", entry,
                         inbound.address.channel, inbound.sender_id)
                return True
            log.warning("allowFrom %s is pinned to id %s; sender %s now uses that username "
                        "and is not admitted", entry, pinned, inbound.sender_id)
        return False

    def _owner(self, inbound: Inbound) -> bool:
        """Owners (``channels.<name>.owners``) may always talk to the bot where it talks."""
        return is_owner(self._config(), inbound.address.channel, inbound.sender_id,
                        inbound.sender_aliases)

    async def check(self, inbound: Inbound, *, dry_run: bool = False) -> AccessDecision:
        """The decision for ``inbound`` (may create a pairing request).

        ``dry_run``: the same verdict without side effects (no pairing request is created
        or reminded; an unknown sender is simply refused).
        """
        channel = inbound.address.channel
        if channel in OPERATOR_CHANNELS:
            return ALLOW
        chan = self._config().channel(channel)
        if not isinstance(chan, ChannelConfig):  # not configured, or the console's
            return AccessDecision(Verdict.REFUSE, f"channel {channel!r} is not configured",
                                  code="channel_disabled")
        if not chan.enabled:
            return AccessDecision(Verdict.REFUSE, f"channel {channel!r} is disabled",
                                  code="channel_disabled")
        if inbound.address.chat_kind is ChatKind.GROUP:
            return await self._check_group(chan, inbound, dry_run)
        return await self._check_direct(chan, inbound, dry_run)

    async def _check_direct(self, chan: ChannelConfig, inbound: Inbound,
                            dry_run: bool = False) -> AccessDecision:
        policy = chan.dmPolicy
        if policy == "disabled":
            return AccessDecision(Verdict.REFUSE, "direct messages are disabled",
                                  code="dm_disabled")
        if policy == "open" or self._owner(inbound) or await self._allowed(
                chan.allowFrom, inbound, dry_run=dry_run):
            direct = chan.direct.get(inbound.sender_id) or chan.direct.get("*")
            if direct is not None and not direct.enabled:
                return AccessDecision(Verdict.REFUSE, "this direct chat is disabled",
                                      code="dm_disabled")
            return ALLOW
        if policy == "allowlist":
            return AccessDecision(Verdict.REFUSE, "sender not in allowFrom",
                                  code="not_allowed")
        # pairing
        channel = inbound.address.channel
        if await self._store.is_approved(channel, (inbound.sender_id, *inbound.sender_aliases)):
            return ALLOW
        if dry_run:
            return AccessDecision(Verdict.REFUSE, "unknown sender", code="pairing")
        now = self._clock()
        request, created = await self._store.pairing_code_for(
            channel, inbound.address.account, inbound.sender_id, inbound.sender_name,
            new_code=self._new_code, ttl_s=PAIRING_TTL_S, max_pending=PAIRING_MAX_PENDING,
            now=now)
        if request is None:
            log.warning("pairing: %s already has %d pending requests; sender %s gets no code",
                        channel, PAIRING_MAX_PENDING, inbound.sender_id)
            return AccessDecision(Verdict.REFUSE, "unknown sender; pairing queue full",
                                  code="pairing_full")
        if created:
            log.info("pairing: new code for %s sender %s (%s); approve with "
                     "`palaver pairing approve %s <code>`", channel, inbound.sender_id,
                     inbound.sender_name or "?", channel)
        elif not await self._store.pairing_remind(request.id, after_s=PAIRING_REMIND_AFTER_S,
                                                  now=now):
            return AccessDecision(Verdict.REFUSE, "unknown sender; pairing code already sent",
                                  code="pairing")
        return AccessDecision(Verdict.REFUSE, "unknown sender; pairing code sent",
                              reply=pairing_message(request.code, channel), code="pairing")

    async def _check_group(self, chan: ChannelConfig, inbound: Inbound,
                           dry_run: bool = False) -> AccessDecision:
        policy = chan.groupPolicy
        if policy == "disabled":
            return AccessDecision(Verdict.REFUSE, "group messages are disabled",
                                  code="group_disabled")
        chat_id = inbound.address.chat_id
        group = chan.groups.get(chat_id) or chan.groups.get("*")
        if policy == "allowlist" and group is None:
            return AccessDecision(Verdict.REFUSE, f"group {chat_id} is not in groups",
                                  code="group_not_allowed")
        require_mention = True
        if group is not None:
            if not group.enabled:
                return AccessDecision(Verdict.REFUSE, f"group {chat_id} is disabled",
                                      code="group_disabled")
            if group.allowFrom is not None and not self._owner(inbound) and \
                    not await self._allowed(group.allowFrom, inbound, dry_run=dry_run):
                return AccessDecision(Verdict.REFUSE, "sender not in the group's allowFrom",
                                      code="not_allowed")
            require_mention = group.requireMention
            thread = inbound.address.thread_id
            topic = group.topics.get(thread) if thread is not None else None
            if topic is not None:
                if not topic.enabled:
                    return AccessDecision(Verdict.REFUSE, f"topic {thread} is disabled",
                                          code="group_disabled")
                if topic.requireMention is not None:
                    require_mention = topic.requireMention
        if require_mention and not inbound.mentioned:
            return AccessDecision(Verdict.IGNORE, "group message without a mention",
                                  code="no_mention")
        if changes_chat(inbound.text) and not await self._may_change_group(
                chan, group, inbound, dry_run):
            # Nothing is answered: a stranger learns nothing, and cannot make the bot talk.
            return AccessDecision(Verdict.REFUSE,
                                  "a command that changes the chat, from a stranger",
                                  code="command_not_allowed")
        return ALLOW

    async def _may_change_group(self, chan: ChannelConfig, group: GroupConfig | None,
                                inbound: Inbound, dry_run: bool) -> bool:
        """May this group member change the chat (``/new``, ``/model NAME``)?

        Owners, and senders the bot may talk to: the group's ``allowFrom`` when it has one
        (everyone else was refused already), else the channel's ``allowFrom`` and the
        senders approved by pairing.  Anyone else is a stranger here."""
        if self._owner(inbound):
            return True
        if group is not None and group.allowFrom is not None:
            return True
        if await self._allowed(chan.allowFrom, inbound, dry_run=dry_run):
            return True
        return await self._store.is_approved(
            inbound.address.channel, (inbound.sender_id, *inbound.sender_aliases))


# ------------------------------------------------------------------------------ CLI


def _with_store(args: Any, body: Callable[[Store], Awaitable[int]]) -> int:
    """Open the store of the config the command should use, run ``body`` on it, close it.

    A config that does not load raises ConfigError: ``cli.main`` reports it with the
    status every command uses for it."""
    from bridge.config.load import load_for_cli

    config, _path = load_for_cli(args)

    async def run() -> int:
        store = await Store.connect(config)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_pairing_list(args: Any) -> int:
    """``palaver pairing list``: pending pairing requests (and approved senders)."""

    async def show(store: Store) -> int:
        pending = await store.pending_pairings()
        approved = await store.approvals()
        now = time.time()
        if not pending:
            print("No pending pairing requests.")
        else:
            print(f"{'CHANNEL':<10} {'CODE':<9} {'SENDER':<24} {'NAME':<20} EXPIRES IN")
            for r in pending:
                minutes = max(0, int((r.expires_at - now) // 60))
                print(f"{r.channel:<10} {r.code:<9} {r.sender_id:<24} "
                      f"{(r.sender_name or '-')[:20]:<20} {minutes} min")
        if approved:
            print(f"\nApproved senders: {len(approved)}")
            for channel, sender, name in approved:
                print(f"  {channel:<10} {sender}" + (f" ({name})" if name else ""))
        return EXIT_OK

    return _with_store(args, show)


def cmd_pairing_approve(args: Any) -> int:
    """``palaver pairing approve <channel> <code>``: admit the sender who got ``code``."""

    async def approve(store: Store) -> int:
        request = await store.approve_pairing(args.channel, args.code)
        if request is None:
            print(f"palaver: no pending, unexpired pairing code {args.code!r} on channel "
                  f"{args.channel!r} (see `palaver pairing list`)", file=sys.stderr)
            return EXIT_FAILURE
        who = request.sender_id + (f" ({request.sender_name})" if request.sender_name else "")
        print(f"Approved {who} on {request.channel}.")
        return EXIT_OK

    return _with_store(args, approve)
