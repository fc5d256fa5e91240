"""The Telegram channel (python-telegram-bot 22): Updates <-> envelopes.

Rooms: :mod:`.channel` (lifecycle, outbound), :mod:`.http` (the aiohttp transport).
"""

from channels.telegram.channel import COMMANDS, TelegramChannel, TokenError, resolve_token

__all__ = ["COMMANDS", "TelegramChannel", "TokenError", "resolve_token"]
