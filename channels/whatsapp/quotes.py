"""The quote journal: what a reply needs to quote a group message, across restarts.

The core's store keeps the platform message id and chat of an inbound message but not
its sender JID, which WhatsApp needs to find a quoted message in a group; the adapter
keeps that here, in ``quotes.jsonl`` next to the session, or, when several Palavers
share the account, in the store's key-value table (the next leader can quote too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E

from channels.whatsapp.content import QuoteRef, clip

if TYPE_CHECKING:
    from channels.whatsapp.session import KeyValue

log = logging.getLogger(__name__)

QUOTES_FILE = "quotes.jsonl"


class QuoteJournal:
    """Recent group messages the bot may quote, kept in ``quotes.jsonl`` across restarts.

    The core's store keeps the platform message id and chat of an inbound message but not
    its sender JID, which WhatsApp needs to find a quoted message in a group.  One JSON
    line per accepted group message (id, chat, participant, a clipped text for the bot's
    own devices); the file is rewritten with the newest ``capacity`` entries when it holds
    twice as many lines.

    With ``shared`` (the store's key-value table) each entry is one key under
    ``namespace`` instead, numbered (``seq``) so the newest ``capacity`` survive a
    :meth:`load`; an entry pushed out is deleted as the new one is written.
    """

    def __init__(self, path: Path, capacity: int, *, shared: KeyValue | None = None,
                 namespace: str = "whatsapp.quotes:default") -> None:
        self.path = path
        self.capacity = capacity
        self._shared = shared
        self._namespace = namespace
        self._entries: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lines = 0
        self._seq = 0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read the journal (a missing or unreadable file is an empty one)."""
        if self._shared is not None:
            await self._load_shared(self._shared)
            return

        def read() -> tuple[OrderedDict[str, dict[str, str]], int]:
            entries: OrderedDict[str, dict[str, str]] = OrderedDict()
            lines = 0
            try:
                with self.path.open(encoding="utf-8") as fh:
                    for line in fh:
                        lines += 1
                        try:
                            item = json.loads(line)
                        except ValueError:
                            continue  # a line cut short by a crash
                        if isinstance(item, dict) and all(
                            isinstance(item.get(k), str) for k in ("id", "chat", "participant")
                        ):
                            entries[item["id"]] = item
                            entries.move_to_end(item["id"])
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("WhatsApp: ignoring unreadable %s: %s", self.path.name, exc)
            while len(entries) > self.capacity:
                entries.popitem(last=False)
            return entries, lines

        self._entries, self._lines = await asyncio.to_thread(read)

    async def _load_shared(self, shared: KeyValue) -> None:
        items: list[dict[str, str]] = []
        for key, raw in (await shared.kv_items(self._namespace)).items():
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict) and item.get("id") == key and all(
                    isinstance(item.get(k), str) for k in ("chat", "participant")):
                items.append(item)
        items.sort(key=lambda i: int(i.get("seq") or 0))
        stale, kept = items[:-self.capacity], items[-self.capacity:]
        for item in stale:
            await shared.kv_set(self._namespace, item["id"], None)
        self._entries = OrderedDict((i["id"], i) for i in kept)
        self._seq = int(kept[-1].get("seq") or 0) if kept else 0

    def get(self, message_id: str, chat: str) -> QuoteRef | None:
        """How to quote ``message_id`` in ``chat``, when the journal holds it."""
        item = self._entries.get(message_id)
        if item is None or item["chat"] != chat:
            return None
        text = item.get("text") or ""
        return QuoteRef(message_id, item["participant"],
                        waE2E.Message(conversation=text) if text else None)

    async def add(self, message_id: str, chat: str, participant: str, text: str) -> None:
        """Remember a group message (append a line; compact when the file doubled)."""
        item = {"id": message_id, "chat": chat, "participant": participant,
                "text": clip(text, 200)}
        async with self._lock:
            if self._shared is not None:
                await self._add_shared(self._shared, item)
                return
            self._entries[message_id] = item
            self._entries.move_to_end(message_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            if self._lines + 1 > 2 * self.capacity:
                snapshot = list(self._entries.values())
                await asyncio.to_thread(self._rewrite, snapshot)
                self._lines = len(snapshot)
            else:
                await asyncio.to_thread(self._append, item)
                self._lines += 1

    async def _add_shared(self, shared: KeyValue, item: dict[str, str]) -> None:
        self._seq += 1
        item = {**item, "seq": str(self._seq)}
        self._entries[item["id"]] = item
        self._entries.move_to_end(item["id"])
        evicted = []
        while len(self._entries) > self.capacity:
            evicted.append(self._entries.popitem(last=False)[0])
        # Kept in memory either way: a store hiccup only costs the next leader a quote
        # (an entry not deleted now is dropped by the next load).
        try:
            await shared.kv_set(self._namespace, item["id"],
                                json.dumps(item, ensure_ascii=False))
            for old in evicted:
                await shared.kv_set(self._namespace, old, None)
        except Exception as exc:
            log.warning("WhatsApp: cannot store message %s for quoting: %s", item["id"],
                        clip(str(exc), 200))

    def _append(self, item: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")

    def _rewrite(self, items: list[dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".quotes-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for item in items:
                    fh.write(json.dumps(item, ensure_ascii=False) + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
