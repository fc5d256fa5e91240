"""Per-chat settings (the ``/model`` choice) and a small key-value store for channels."""

from __future__ import annotations

import time

from bridge.store.db import Database
from bridge.store.sql import all_body, run_body, val_body

# A chat setting read from the database is trusted this long.  This process's own writes
# apply at once; another process's (``palaver chats reset``) within this many seconds.
SETTINGS_CACHE_SECONDS = 2.0

_UPSERT_SETTING = (
    "INSERT INTO chat_settings (session_key, name, value, updated_at)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (session_key, name) DO UPDATE SET"
    " value = excluded.value, updated_at = excluded.updated_at")
_UPSERT_KV = (
    "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value,"
    " updated_at = excluded.updated_at")


class SettingsQueries(Database):
    # Read every turn: cached in memory, (value, read at) by (session key, name).
    _settings_cache: dict[tuple[str, str], tuple[str | None, float]]

    async def chat_setting(self, session_key: str, name: str) -> str | None:
        """A chat's stored setting, e.g. ``chat_setting(key, "model")``."""
        cache = self.__dict__.setdefault("_settings_cache", {})
        now = time.monotonic()
        hit = cache.get((session_key, name))
        if hit is not None and now - hit[1] < SETTINGS_CACHE_SECONDS:
            return hit[0]
        value = await self.read_with(val_body(
            "SELECT value FROM chat_settings WHERE session_key = ? AND name = ?",
            session_key, name))
        if len(cache) > 10_000:
            cache.clear()
        cache[(session_key, name)] = (value, now)
        return value

    async def set_chat_setting(self, session_key: str, name: str, value: str | None) -> None:
        """Store (``None``: clear) a chat's setting."""
        self.__dict__.setdefault("_settings_cache", {}).pop((session_key, name), None)
        if value is None:
            await self.atomically(run_body(
                "DELETE FROM chat_settings WHERE session_key = ? AND name = ?",
                session_key, name))
        else:
            await self.atomically(run_body(_UPSERT_SETTING, session_key, name, value,
                                           time.time()))

    async def kv_get(self, namespace: str, key: str) -> str | None:
        """A value a channel remembered (e.g. ``kv_get("whatsapp.lid", lid)``)."""
        return await self.read_with(val_body(
            "SELECT value FROM kv WHERE namespace = ? AND key = ?", namespace, key))

    async def kv_set(self, namespace: str, key: str, value: str | None) -> None:
        """Remember (``None``: forget) a value under ``namespace``/``key``."""
        if value is None:
            await self.atomically(run_body(
                "DELETE FROM kv WHERE namespace = ? AND key = ?", namespace, key))
        else:
            await self.atomically(run_body(_UPSERT_KV, namespace, key, value, time.time()))

    async def kv_items(self, namespace: str) -> dict[str, str]:
        rows = await self.read_with(all_body(
            "SELECT key, value FROM kv WHERE namespace = ?", namespace))
        return {r["key"]: r["value"] for r in rows}
