"""The wire clients' memo of converted history turns and the JSON encoding that reuses it."""

from __future__ import annotations

import json

import pytest

from bridge.models.base import ImagePart, ModelRequest, TextPart, Turn
from bridge.models.clients import client_class
from bridge.models.http import WireJSON, _WireTurnCache, encode_json
from tests.models.conftest import APIS, make_config, provider


def _client(api):
    cfg = make_config({"p": provider("http://127.0.0.1:9/v1", api)})
    return client_class(api)(cfg.model("p/m"), None)


def _history(n):
    turns = []
    for i in range(n):
        turns.append(Turn.text("user", f"[Zoë] question {i} — «ünïcode» 🦜 \"quoted\"\n"))
        turns.append(Turn.text("assistant", f"answer {i}"))
    return tuple(turns)


@pytest.mark.parametrize("api", APIS)
def test_same_turns_give_the_same_bytes_as_plain_json(api):
    history = _history(20)
    img = Turn("user", (TextPart("look"), ImagePart(b"GIF89a", "image/gif")))
    first = _client(api).build_payload(ModelRequest("Sys ü", history + (img,), temperature=0.5))
    again = _client(api).build_payload(ModelRequest("Sys ü", history + (img,), temperature=0.5))
    plain = json.dumps(first, ensure_ascii=False).encode("utf-8")
    assert encode_json(first) == plain
    assert encode_json(again) == plain
    assert json.loads(plain) == first


@pytest.mark.parametrize("api", APIS)
def test_a_text_turn_is_converted_once_per_turn_object(api, monkeypatch):
    client = _client(api)
    client._turn_cache.clear()
    calls = []
    convert = type(client)._wire_turn
    monkeypatch.setattr(type(client), "_wire_turn",
                        lambda self, turn: calls.append(turn) or convert(self, turn))
    history = _history(5)
    img = Turn("user", (TextPart("look"), ImagePart(b"GIF89a", "image/gif")))
    first = client.build_payload(ModelRequest(None, history + (img,)))
    assert len(calls) == 11
    second = _client(api).build_payload(ModelRequest(None, history + (img,)))
    assert calls[11:] == [img]  # only the image turn again
    key = "input" if api == "openai-responses" else "messages"
    assert second[key] == first[key]
    # An equal but distinct Turn object is converted again (keyed by identity).
    _client(api).build_payload(ModelRequest(None, (Turn.text("user", "[Zoë] question 0"),)))
    assert len(calls) == 13


def test_the_cache_is_bounded_by_turns_and_bytes():
    cache = _WireTurnCache(max_turns=3, max_bytes=1000)
    convert = lambda t: {"t": t.parts[0].text}  # noqa: E731
    turns = [Turn.text("user", str(i)) for i in range(5)]
    for t in turns:
        assert cache.get(t, convert) == {"t": t.parts[0].text}
    assert len(cache) == 3
    cache.get(turns[2], convert)  # most recently used now
    newest = Turn.text("user", "x")
    cache.get(newest, convert)
    assert [e[0] for e in cache._data.values()] == [turns[4], turns[2], newest]
    big = Turn.text("user", "y" * 300)  # over a quarter of the bytes: never kept
    assert isinstance(cache.get(big, convert), WireJSON)
    assert all(e[0] is not big for e in cache._data.values())


def test_encode_json_without_cached_objects_is_json_dumps():
    value = {"a": [1, 2.5, None, {"b": "ü"}], "c": {"d": []}, "e": True}
    assert encode_json(value) == json.dumps(value, ensure_ascii=False).encode("utf-8")
    nested = {"x": [{"y": [WireJSON({"z": "é"})]}]}
    assert encode_json(nested) == json.dumps(nested, ensure_ascii=False).encode("utf-8")
