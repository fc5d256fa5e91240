"""SSE framing, Retry-After parsing and the one place errors are classified."""

from __future__ import annotations

import email.utils
import json

import pytest

from bridge.models.base import ErrorClass, ModelError
from bridge.models.errors import classify_http, classify_payload, parse_retry_after, redact
from bridge.models.http import SSEEvent, SSEParser

# ----------------------------------------------------------------------------- SSE


def parse_all(data: bytes, step: int | None = None) -> list[SSEEvent]:
    p = SSEParser()
    out: list[SSEEvent] = []
    if step is None:
        out += p.feed(data)
    else:
        for i in range(0, len(data), step):
            out += p.feed(data[i:i + step])
    return out + p.finish()


STREAM = (
    b": keepalive comment\r\n"
    b"event: response.output_text.delta\r\n"
    b"data: {\"delta\": \"h\\u00e9\"}\r\n\r\n"
    b"data: line one\n"
    b"data: line two\n"
    b"id: 7\n\n"
    b"event: ping\rdata:nospace\r\r"
    b"retry: 100\n"
    b"event: only-event-no-data\n\n"
    b"data: caf\xc3\xa9\n\n"
    b"data: [DONE]"
)
EXPECTED = [
    SSEEvent("response.output_text.delta", '{"delta": "h\\u00e9"}'),
    SSEEvent("message", "line one\nline two", "7"),
    SSEEvent("ping", "nospace", "7"),
    SSEEvent("message", "café", "7"),
    SSEEvent("message", "[DONE]", "7"),
]


@pytest.mark.parametrize("step", [None, 1, 2, 3, 7])
def test_sse_parser_framing(step):
    assert parse_all(STREAM, step) == EXPECTED


def test_sse_event_json_malformed_is_bad_response():
    with pytest.raises(ModelError) as err:
        SSEEvent("message", "{not json").json()
    assert err.value.error_class is ErrorClass.BAD_RESPONSE


# ----------------------------------------------------------------------------- Retry-After


def test_retry_after_seconds_date_and_ms():
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    when = email.utils.formatdate(1_000_090, usegmt=True)
    assert parse_retry_after({"retry-after": when}, now=1_000_000) == pytest.approx(90)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "999999"}) == 3600.0


# ----------------------------------------------------------------------------- classification


def body(message: str, code: str | None = None, type_: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


def anthropic_body(type_: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": type_, "message": message}}).encode()


@pytest.mark.parametrize(("status", "raw", "expected"), [
    (429, body("slow down", "rate_limit_exceeded"), ErrorClass.RATE_LIMITED),
    (503, b"", ErrorClass.OVERLOADED),
    (529, anthropic_body("overloaded_error", "Overloaded"), ErrorClass.OVERLOADED),
    (400, body("Model is loading, try later"), ErrorClass.OVERLOADED),
    (500, json.dumps({"error": {"code": 503, "message": "Loading model",
                                "type": "unavailable_error"}}).encode(), ErrorClass.OVERLOADED),
    (500, body("boom", type_="server_error"), ErrorClass.SERVER_ERROR),
    (502, b"<html>bad gateway</html>", ErrorClass.SERVER_ERROR),
    (401, body("bad key", "invalid_api_key"), ErrorClass.AUTH),
    (403, anthropic_body("permission_error", "no"), ErrorClass.AUTH),
    (404, body("The model `x` does not exist", "model_not_found"), ErrorClass.NOT_FOUND),
    (400, body("This model's maximum context length is 8192 tokens", "context_length_exceeded"),
     ErrorClass.CONTEXT_OVERFLOW),
    (400, anthropic_body("invalid_request_error", "prompt is too long: 210000 tokens > 200000"),
     ErrorClass.CONTEXT_OVERFLOW),
    (400, json.dumps({"error": {"code": 400, "type": "exceed_context_size_error", "message":
                                "the request exceeds the available context size"}}).encode(),
     ErrorClass.CONTEXT_OVERFLOW),
    (400, body("temperature must be <= 2"), ErrorClass.BAD_REQUEST),
    (422, b"{\"detail\": \"validation\"}", ErrorClass.BAD_REQUEST),
    (302, b"", ErrorClass.BAD_RESPONSE),
])
def test_classify_http(status, raw, expected):
    err = classify_http(status, raw, {"retry-after": "3"})
    assert err.error_class is expected
    assert err.status == status
    assert err.retry_after == (3.0 if status in (429, 503, 529) else None)


@pytest.mark.parametrize(("code", "expected"), [
    ("rate_limit_exceeded", ErrorClass.RATE_LIMITED),
    ("overloaded_error", ErrorClass.OVERLOADED),
    ("api_error", ErrorClass.SERVER_ERROR),
    ("server_error", ErrorClass.SERVER_ERROR),
    ("context_length_exceeded", ErrorClass.CONTEXT_OVERFLOW),
    ("invalid_request_error", ErrorClass.BAD_REQUEST),
    ("authentication_error", ErrorClass.AUTH),
    ("something_new", ErrorClass.SERVER_ERROR),
])
def test_classify_stream_error_codes(code, expected):
    assert classify_payload(code, "msg").error_class is expected


def test_secrets_are_redacted_from_messages():
    key = "sk-proj-SECRETSECRET123"
    err = classify_http(401, body(f"Incorrect API key provided: {key}. Bearer {key}"), {},
                        secrets=(key,))
    assert key not in str(err) and "SECRETSECRET" not in str(err)
    assert "[REDACTED]" in str(err)
    assert "abcd1234" not in redact("Authorization: Bearer abcd1234xyz")
    assert "mysecretvalue" not in redact("key mysecretvalue here", ["mysecretvalue"])
