"""WhatsApp channel (neonize, a Python binding of whatsmeow).

The rooms: :mod:`.client` (the neonize transport), :mod:`.content` (protobuf <-> content,
pure), :mod:`.identity` (who a sender is; the LID -> phone map), :mod:`.quotes` (the
quote journal), :mod:`.channel` (the adapter), :mod:`.login` (``palaver whatsapp
login`` / ``logout`` / ``status``).  Only the adapter is re-exported: the composition
root names it ``channels.whatsapp:WhatsAppChannel``.

``NEONIZE_BOT_TAG`` is set here, before any module of this package imports neonize:
neonize's Go library reads it from the environment Go copied when the library loaded,
and unless it is "off" it adds a ``<bot biz_bot="1"/>`` node to every message to a
phone-number chat, so the recipient sees a bot label on the operator's own account.
Palaver's default is "off"; an operator who wants the label sets ``NEONIZE_BOT_TAG=on``
in the environment (an explicit value is never overridden).
"""

import os

BOT_TAG_ENV = "NEONIZE_BOT_TAG"
BOT_TAG_DEFAULT = "off"
os.environ.setdefault(BOT_TAG_ENV, BOT_TAG_DEFAULT)

from channels.whatsapp.channel import WhatsAppChannel  # noqa: E402 - after the env

__all__ = ["BOT_TAG_DEFAULT", "BOT_TAG_ENV", "WhatsAppChannel"]
