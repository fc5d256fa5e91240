"""The Telegram channel (python-telegram-bot 22): Updates <-> envelopes.

Rooms: :mod:`.channel` (lifecycle, outbound), :mod:`.intake` (poll loop, webhook),
:mod:`.translate` (Message -> Inbound draft, pure), :mod:`.download` (getFile into the
media store), :mod:`.token` (where the bot token comes from), :mod:`.http` (the aiohttp
transport; the one module using PTB's private request API), :mod:`.pacing` (send slots
within the flood limits), :mod:`.live` (live previews, reactions: issue 17).
"""

from channels.telegram.channel import TelegramChannel
from channels.telegram.token import TokenError, resolve_token

__all__ = ["TelegramChannel", "TokenError", "resolve_token"]
