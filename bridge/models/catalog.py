"""Built-in hosted providers merged into the config when ``models.mode`` is ``merge``."""

from __future__ import annotations

# provider id -> environment variable holding its key
BUILTIN_KEY_ENV = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}
BUILTIN_PROVIDER_IDS = frozenset(BUILTIN_KEY_ENV)
