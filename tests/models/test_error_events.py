"""Error events inside 200 streams and numeric error codes, classified like HTTP errors."""

from __future__ import annotations

import json

import pytest

from bridge.models.base import ErrorClass
from bridge.models.errors import (
    classify_event,
    classify_http,
    empty_answer,
    error_fields,
    error_status,
    is_error_event,
)


@pytest.mark.parametrize(("data", "expected"), [
    ({"error": {"code": 500, "message": "boom", "type": "server_error"}}, True),  # llama.cpp
    ({"error": {"message": "x", "type": None, "param": None, "code": "500"}}, True),  # LiteLLM
    ({"type": "error", "code": "server_error", "message": "x"}, True),  # Responses' own
    ({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}, True),
    ({"type": "response.failed", "response": {"error": {"code": "x"}}}, False),
    ({"type": "response.output_text.delta", "delta": "hi"}, False),
    ({"choices": [], "error": None}, False),
    ("[DONE]", False),
])
def test_is_error_event(data, expected):
    assert is_error_event(data) is expected


@pytest.mark.parametrize(("data", "expected"), [
    ({"error": {"code": 500, "message": "boom", "type": "server_error"}},
     ErrorClass.SERVER_ERROR),
    ({"error": {"message": "boom", "type": None, "param": None, "code": "500"}},
     ErrorClass.SERVER_ERROR),
    ({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
     ErrorClass.OVERLOADED),
    ({"error": {"code": 429, "message": "slow down", "type": None}}, ErrorClass.RATE_LIMITED),
    ({"error": {"code": 400, "message": "the request exceeds the available context size",
                "type": "exceed_context_size_error"}}, ErrorClass.CONTEXT_OVERFLOW),
    ({"error": {"code": 400, "message": "bad", "type": "invalid_request_error"}},
     ErrorClass.BAD_REQUEST),
    ({"error": {"code": 401, "message": "no", "type": "authentication_error"}},
     ErrorClass.AUTH),
    ({"error": {"message": "an unknown failure"}}, ErrorClass.SERVER_ERROR),
])
def test_stream_error_events_classify_by_code_type_and_message(data, expected):
    err = classify_event(data)
    assert err.error_class is expected
    assert err.status is None  # the stream's HTTP status was 200
    assert err.message.startswith("error event")


def test_numeric_codes_yield_to_the_type_and_name_a_status():
    llama = {"error": {"code": 400, "message": "m", "type": "invalid_request_error"}}
    assert error_fields(llama) == ("invalid_request_error", "m")
    assert error_status(llama) == 400
    litellm = {"error": {"message": "m", "type": None, "param": None, "code": "500"}}
    assert error_fields(litellm) == (None, "m")
    assert error_status(litellm) == 500
    openai = {"error": {"message": "m", "type": "requests", "code": "rate_limit_exceeded"}}
    assert error_fields(openai) == ("rate_limit_exceeded", "m")
    assert error_status(openai) is None
    assert error_status({"error": {"code": True}}) is None


def test_http_error_with_an_int_code_keeps_the_http_status():
    raw = json.dumps({"error": {"code": 400, "message": "Cannot determine type of 'item'",
                                "type": "invalid_request_error"}}).encode()
    err = classify_http(400, raw, {})
    assert err.error_class is ErrorClass.BAD_REQUEST and err.status == 400
    assert "invalid_request_error: Cannot determine type of 'item'" in err.message


def test_nothing_produced_is_told_apart_from_only_reasoning():
    nothing = empty_answer("finish: stop", produced=False, output_tokens=0)
    thought = empty_answer("finish: stop", produced=True, output_tokens=12)
    assert nothing.error_class is thought.error_class is ErrorClass.EMPTY_RESPONSE
    assert "produced no output at all" in nothing.message
    assert "chat template" in nothing.message
    assert thought.message == "no text left after removing reasoning (finish: stop)"
    counted = empty_answer("finish: stop", produced=False, output_tokens=5)
    assert "no text left" in counted.message
