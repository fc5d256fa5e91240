"""Who is who: a sender's JIDs -> the id the core sees, and the LID -> phone map.

WhatsApp addresses a person by phone-number JID (``491…@s.whatsapp.net``) or, more and
more, by an opaque LID (``…@lid``).  The core keys people by ``+E164`` when the number
is known, so the adapter remembers every LID -> phone pairing it learns (from the
sender's alternate JID, whatsmeow's store or this device's own identity) in
``lid-map.json`` next to the session, or, when several Palavers share the account, in
the store's key-value table (the next leader reads what this one learnt).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from neonize.proto.Neonize_pb2 import JID

from channels.whatsapp.content import LID_SERVER, PHONE_SERVER, jid_str

if TYPE_CHECKING:
    from channels.whatsapp.session import KeyValue

log = logging.getLogger(__name__)

LID_MAP_FILE = "lid-map.json"


class LidMap:
    """LID user -> phone number digits, remembered in ``lid-map.json`` (or under
    ``namespace`` in ``shared``, one key per LID: no file to rewrite, no lost update
    between processes)."""

    def __init__(self, path: Path, *, shared: KeyValue | None = None,
                 namespace: str = "whatsapp.lid:default") -> None:
        self.path = path
        self._shared = shared
        self._namespace = namespace
        self._map: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read the map (a missing or unreadable file is an empty map)."""
        if self._shared is not None:
            items = await self._shared.kv_items(self._namespace)
            self._map = {k: v for k, v in items.items() if k.isdigit() and v.isdigit()}
            return

        def read() -> dict[str, str]:
            try:
                data = json.loads(self.path.read_text("utf-8"))
            except FileNotFoundError:
                return {}
            except (OSError, ValueError) as exc:
                log.warning("WhatsApp: ignoring unreadable %s: %s", self.path.name, exc)
                return {}
            if not isinstance(data, dict):
                return {}
            return {str(k): str(v) for k, v in data.items()
                    if str(k).isdigit() and str(v).isdigit()}

        self._map = await asyncio.to_thread(read)

    def phone_for(self, lid_user: str) -> str | None:
        """The phone digits behind a LID user, when known."""
        return self._map.get(lid_user)

    async def remember(self, lid_user: str, phone: str) -> None:
        """Record a pairing (digits only); the file is rewritten atomically on a change."""
        if not (lid_user.isdigit() and phone.isdigit()) or self._map.get(lid_user) == phone:
            return
        async with self._lock:
            self._map[lid_user] = phone
            if self._shared is not None:
                # A cache (whatsmeow keeps its own map): a store hiccup must not cost
                # the message being handled, so it is only logged.
                try:
                    await self._shared.kv_set(self._namespace, lid_user, phone)
                except Exception as exc:
                    log.warning("WhatsApp: cannot store the LID map entry: %s", exc)
                return
            snapshot = dict(self._map)
            await asyncio.to_thread(self._write, snapshot)

    def _write(self, snapshot: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lid-map-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(snapshot, fh, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class SenderIdentity:
    """A sender as the core sees it: its id, the JID it came from, other ids it matches."""

    sender_id: str
    jid: JID  # the sender JID as it arrived (device stripped)
    aliases: tuple[str, ...]


def sender_identity(jid: JID, *, phone: str | None, lid: str | None) -> SenderIdentity:
    """The identity of a sender whose phone digits and LID user are known (or None).

    ``+E164`` is the id when the phone is known, else the JID as it came.  The aliases
    let ``allowFrom`` entries written any way match the core's literal comparison: the
    raw JID, the LID JID, the phone JID and the bare digits ("15551234567"), each once
    and never the id itself.
    """
    raw = jid_str(jid)
    sender_id = f"+{phone}" if phone else raw
    aliases = [raw]
    if lid:
        aliases.append(f"{lid}@{LID_SERVER}")
    if phone:
        aliases.append(f"{phone}@{PHONE_SERVER}")
        aliases.append(phone)
    unique = tuple(dict.fromkeys(a for a in aliases if a != sender_id))
    return SenderIdentity(sender_id, jid, unique)
