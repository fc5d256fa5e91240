"""bridge.secrets: one marker and one set of rules for logs, model errors and config show."""

from __future__ import annotations

from bridge import logs, secrets
from bridge.config.load import REDACTED as CONFIG_MARKER
from bridge.secrets import BOT_TOKEN_RE, REDACTED, header_secrets, is_secret_key, redact


def test_one_marker_everywhere():
    assert REDACTED == "[REDACTED]" == logs.REDACTED == CONFIG_MARKER


def test_redact_given_secrets_and_shapes():
    text = "key hunter22 and sk-abcd1234 and Authorization: Bearer tok.en-123"
    out = redact(text, ["hunter22"])
    assert out == f"key {REDACTED} and {REDACTED} and Authorization: Bearer {REDACTED}"
    assert redact("abc", ["abc"]) == "abc"  # too short to be worth hiding everywhere


def test_registered_secrets_are_redacted_until_cleared():
    secrets.register_secret("s3cr3t-value")
    try:
        assert redact("x s3cr3t-value y") == f"x {REDACTED} y"
    finally:
        secrets.clear_secrets()
    assert redact("x s3cr3t-value y") == "x s3cr3t-value y"


def test_bot_token_shape():
    assert BOT_TOKEN_RE.match("123456789:" + "A" * 35)
    assert not BOT_TOKEN_RE.match("123456789:short")
    assert not BOT_TOKEN_RE.match("bot123:" + "A" * 35)
    assert not BOT_TOKEN_RE.match("123456789:" + "A" * 35 + "\n")  # "$" would allow it
    assert not BOT_TOKEN_RE.match("١٢٣:" + "A" * 35)  # Arabic-Indic digits are \d too


def test_secret_keys_and_headers():
    assert is_secret_key("apiKey") and is_secret_key("x-api-key") and is_secret_key("botToken")
    assert not is_secret_key("anthropic/claude") and not is_secret_key("model")
    assert header_secrets({"Authorization": "Bearer abcdef", "X-Plain": "v"}) == [
        "Bearer abcdef", "abcdef"]


def test_config_error_messages_keep_their_words():
    """Redact secret values, not the prose after a key name (issue 12)."""
    import pytest

    from bridge.config.load import ConfigError, load_config_text

    with pytest.raises(ConfigError) as caught:
        load_config_text('{channels: {telegram: {botToken: "not-a-token"}}}', file="p.json5")
    message = str(caught.value)
    assert "botToken" in message and "does not look like a bot token" in message
    assert redact(message) == message  # what the log filter makes of it
    assert "not-a-token" not in message
    # Values are still redacted, also next to such prose.
    assert redact('token: abcdEFGH1234 is wrong') == f"token: {REDACTED} is wrong"
    assert redact('password = "hunter22"') == f'password = "{REDACTED}"'


def test_prose_after_a_key_name_is_kept_values_are_not():
    assert redact("botToken: does not look like a bot token") == \
        "botToken: does not look like a bot token"
    assert redact("apiKey: Field required") == "apiKey: Field required"
    assert redact("password: hunter2 is wrong") == f"password: {REDACTED} is wrong"
    assert redact("token: supersecretvalue") == f"token: {REDACTED}"
    assert redact("api_key=abcdEFGH123 x") == f"api_key={REDACTED} x"
