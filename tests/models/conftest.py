"""Fixtures for the model layer: fake servers, a session, configs, a controllable clock."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest

from bridge.config.schema import Config
from tests.fakes.model_server import FakeModelServer

APIS = ("openai-responses", "openai-completions", "anthropic-messages")


@pytest.fixture
async def server():
    async with FakeModelServer() as s:
        yield s


@pytest.fixture
async def server2():
    async with FakeModelServer() as s:
        yield s


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provider(base_url: str, api: str, *models: str, **extra: Any) -> dict[str, Any]:
    return {"baseUrl": base_url, "api": api, "models": [{"id": m} for m in models or ("m",)],
            **extra}


def make_config(providers: dict[str, dict[str, Any]], primary: str | None = None,
                fallbacks: tuple[str, ...] = (), **extra: Any) -> Config:
    data: dict[str, Any] = {"models": {"providers": providers}, **extra}
    if primary:
        data.setdefault("agents", {}).setdefault("defaults", {})["model"] = {
            "primary": primary, "fallbacks": list(fallbacks)}
    return Config.model_validate(data)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
