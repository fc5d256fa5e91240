"""WhatsApp channel (neonize, a Python binding of whatsmeow).

The rooms: :mod:`.client` (the neonize transport), :mod:`.content` (protobuf <-> content,
pure), :mod:`.identity` (who a sender is; the LID -> phone map), :mod:`.quotes` (the
quote journal), :mod:`.channel` (the adapter), :mod:`.login` (``palaver whatsapp
login`` / ``logout``).  Only the adapter is re-exported: the composition root names it
``channels.whatsapp:WhatsAppChannel``.
"""

from channels.whatsapp.channel import WhatsAppChannel

__all__ = ["WhatsAppChannel"]
