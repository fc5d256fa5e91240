"""Owners: the operators of a channel (``channels.<name>.owners``), never limited."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.config.schema import Config


def is_owner(config: Config, channel: str, sender_id: str | None,
             aliases: Iterable[str] = ()) -> bool:
    """True when the sender's id (or an alias that is an id too, such as a WhatsApp phone
    number) is listed in ``channels.<channel>.owners``, compared case-insensitively.

    ``@username`` aliases never make an owner: a released username can be taken by
    someone else, and an owner is never limited.  The operator's own terminal
    (``palaver chat``) is always an owner."""
    if channel == "console":
        return True
    block = config.channel(channel)
    owners = getattr(block, "owners", ()) or ()
    if not owners or not sender_id:
        return False
    wanted = {o.casefold() for o in owners}
    names = {sender_id.casefold(), *(a.casefold() for a in aliases
                                     if a and not a.startswith("@"))}
    return bool(wanted & names)
