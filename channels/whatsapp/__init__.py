"""WhatsApp channel (neonize): see :mod:`channels.whatsapp.channel`."""

from channels.whatsapp.channel import WhatsAppChannel, cmd_login, cmd_logout

__all__ = ["WhatsAppChannel", "cmd_login", "cmd_logout"]
