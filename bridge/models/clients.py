"""Pick the client for a model's wire API."""

from __future__ import annotations

import aiohttp

from bridge.config.resolve import ResolvedModel
from bridge.models.anthropic import AnthropicClient
from bridge.models.base import ModelClient
from bridge.models.completions import CompletionsClient
from bridge.models.http import ClientBase
from bridge.models.responses import ResponsesClient

_CLIENTS: dict[str, type[ClientBase]] = {
    "openai-responses": ResponsesClient,
    "openai-completions": CompletionsClient,
    "anthropic-messages": AnthropicClient,
}


def client_class(api: str) -> type[ClientBase]:
    """The client class speaking ``api`` (ValueError for an unknown one)."""
    try:
        return _CLIENTS[api]
    except KeyError:
        raise ValueError(f"unknown model api {api!r}") from None


def make_client(model: ResolvedModel, session: aiohttp.ClientSession) -> ModelClient:
    """The client speaking ``model.api``, sharing ``session`` (owned by the caller)."""
    return client_class(model.api)(model, session)
