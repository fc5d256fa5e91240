"""Secrets: what one looks like, the marker that replaces it, and redaction.

One home for every rule that decides "this is a secret": the shapes searched for in free
text (Telegram bot tokens, ``sk-…`` keys, ``Bearer …``, ``api_key=…``), the secrets
registered at runtime (every key of the config in force), the names of config keys and
HTTP headers that hold one, and the one marker, :data:`REDACTED`, that stands in for a
secret wherever Palaver prints text: log records (:mod:`bridge.logs`), model errors
(:mod:`bridge.models.errors`) and ``palaver config show`` (:mod:`bridge.config.load`).
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "BOT_TOKEN_RE",
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "clear_secrets",
    "header_secrets",
    "is_auth_header",
    "is_headers_key",
    "is_secret_key",
    "redact",
    "redact_configured",
    "register_secret",
]

REDACTED = "[REDACTED]"

# Registered secrets shorter than this are ignored: redacting every "abc" would destroy
# the text without protecting anything worth protecting.
MIN_SECRET_LENGTH = 6
# A secret the caller names explicitly (a model's own key) is hidden from this length on.
MIN_GIVEN_SECRET_LENGTH = 4

# A whole Telegram bot token as BotFather issues it: "<bot id>:<secret>".
# ASCII digits only, and \Z: "$" would let a token with a trailing newline through.
BOT_TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]{30,}\Z", re.ASCII)

# ------------------------------------------------------------------ shapes in free text

# (pattern, replacement); order matters only for readability, the patterns do not overlap.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Telegram bot token "123456789:AA…" (35 chars after the colon), also in /bot<token>/.
    (re.compile(r"(?<![0-9])[0-9]{3,}:[A-Za-z0-9_-]{30,}"), REDACTED),
    # OpenAI / Anthropic / OpenRouter style keys: sk-…, sk-ant-…, sk-proj-…, sk-or-v1-…
    # (four characters are enough: a server echoing a wrong key may shorten it).
    (re.compile(r"\bsk-[A-Za-z0-9_-]{4,}"), REDACTED),
    # Bearer xxx anywhere; Basic xxx only after "Authorization" ("basic" is an English word).
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{4,}"), rf"\1\2{REDACTED}"),
    (
        re.compile(r"(?i)\b(authorization\\?[\"']?\s*[:=]\s*\\?[\"']?basic)(\s+)[A-Za-z0-9+/=]{4,}"),
        rf"\1\2{REDACTED}",
    ),
    # x-api-key: xxx, "apiKey": "xxx", api_key=xxx, Authorization: xxx, token=xxx, ...
    (
        re.compile(
            # (not an error code such as "invalid_api_key: Incorrect API key provided")
            r"(?i)\b(?!(?:invalid|incorrect|missing|expired|revoked)[_-])"
            r"([\w-]*?(?:api[_-]?key|authorization|access[_-]?token|token|secret"
            r"|password))(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
            rf"(?!{re.escape(REDACTED)})(?!(?:bearer|basic)\s)"
            # (nor prose after a key name, "botToken: does not look like a bot token": a
            # run of letters followed by another word is words, not a secret value)
            r"(?![A-Za-z]+[ \t]+[A-Za-z])"
            rf"([^\s\"'&,;}}\\]{{4,}})"
        ),
        rf"\1\2{REDACTED}",
    ),
)

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def register_secret(value: Any) -> None:
    """Redact ``value`` (str or pydantic ``SecretStr``) from every :func:`redact` from now on.

    Its URL-encoded form is registered too.  Empty values and values shorter than
    ``MIN_SECRET_LENGTH`` characters are ignored.
    """
    global _secrets_re
    if value is None:
        return
    getter = getattr(value, "get_secret_value", None)
    text = getter() if callable(getter) else str(value)
    text = text.strip()
    if len(text) < MIN_SECRET_LENGTH:
        return
    forms = {text, urllib.parse.quote(text, safe=""), urllib.parse.quote_plus(text)}
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        # Longest first so a secret containing another is removed whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secrets_re = re.compile("|".join(re.escape(s) for s in alternatives))


def clear_secrets() -> None:
    """Forget every registered secret (tests; a config reload re-registers the current ones)."""
    global _secrets_re
    with _secrets_lock:
        _secrets.clear()
        _secrets_re = None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets``, every registered secret and every secret shape replaced
    by :data:`REDACTED`."""
    if not text:
        return text
    for secret in secrets:
        if secret and len(secret) >= MIN_GIVEN_SECRET_LENGTH:
            text = text.replace(secret, REDACTED)
    pattern = _secrets_re
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if not text.isascii():
        for regex, replacement in _PATTERNS:
            text = regex.sub(replacement, text)
        return text
    # ASCII text, where lower() is exactly what (?i) matches: each pattern runs only when
    # a literal it cannot match without is present (most log text holds none, and these
    # substring tests are far cheaper than the searches).  A substitution only inserts
    # REDACTED, which holds none of the literals, so they are checked on the original.
    lower = text.lower()
    (token_re, token_sub), (sk_re, sk_sub), (bearer_re, bearer_sub), \
        (basic_re, basic_sub), (keyword_re, keyword_sub) = _PATTERNS
    if ":" in text:
        text = token_re.sub(token_sub, text)
    if "sk-" in text:
        text = sk_re.sub(sk_sub, text)
    if "bearer" in lower:
        text = bearer_re.sub(bearer_sub, text)
    has_authorization = "authorization" in lower
    if has_authorization and "basic" in lower:
        text = basic_re.sub(basic_sub, text)
    if (has_authorization or "key" in lower or "token" in lower or "secret" in lower
            or "password" in lower):
        text = keyword_re.sub(keyword_sub, text)
    return text



def redact_configured(text: str) -> str:
    """``text`` with every registered secret (the config in force: bot tokens, API keys,
    webhook and console secrets) and anything shaped like a bot token replaced.

    For chat replies: the keyword and key-prefix rules of :func:`redact` would also eat
    ordinary answers (``password = "…"`` in a code sample, ``pip install sk-video``).
    """
    if not text:
        return text
    pattern = _secrets_re
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if ":" in text:
        token_re, token_sub = _PATTERNS[0]
        text = token_re.sub(token_sub, text)
    return text

# ------------------------------------------------------------ secrets in structured data

# A key whose normalised name (casefolded, without "_", "-", ".", spaces) ends like this
# holds a secret, at any depth: apiKey, api_key, x-api-key, botToken, access_token, ...
_SECRET_NAME_ENDINGS = ("apikey", "token", "secret", "secretkey", "password", "passwd",
                        "authorization", "accesskey", "privatekey", "credential",
                        "credentials")
# Header names whose value is a credential (inside any "...headers" object).
_AUTH_HEADER = re.compile(r"auth|token|key|secret|cookie|session|signature|password", re.I)
# "Bearer <token>" and friends: group 2 is the token.
AUTH_VALUE = re.compile(r"^\s*(bearer|basic|token|key)\s+(\S+)", re.I)
# "scheme://user:<password>@": group 2 is the password.
URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]+):([^/\s@]+)@")
# "?key=<secret>", "&token=<secret>", ...: group 2 is the secret.
SECRET_QUERY = re.compile(
    r"(?i)([?&](?:key|token|sig|signature|api[_-]?key|x-api-key|access[_-]?token"
    r"|auth|password|secret)=)([^&#\s\"']+)")
# "Bearer <token>" inside any text: group 2 is the token.
BEARER_IN_TEXT = re.compile(r"(?i)\b(bearer|basic)\s+([A-Za-z0-9._~+/=-]{6,})")


def _norm_key(key: str) -> str:
    return re.sub(r"[\s_.-]", "", key.casefold())


def is_secret_key(key: str | None) -> bool:
    """True when a value under the key ``key`` is a secret (``apiKey``, ``bot_token``, …)."""
    if not key or "/" in key:  # "provider/model" keys are refs, not field names
        return False
    name = _norm_key(key)
    return name == "key" or name.endswith(_SECRET_NAME_ENDINGS)


def is_headers_key(key: str | None) -> bool:
    """True when ``key`` names an object of HTTP headers (``headers``, ``extra_headers``)."""
    return key is not None and _norm_key(key).endswith("headers")


def is_auth_header(name: str, value: str) -> bool:
    """True when the header ``name: value`` carries a credential."""
    return bool(_AUTH_HEADER.search(name) or AUTH_VALUE.match(value))


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """Credential values among HTTP ``headers`` (Authorization, x-api-key, api-key, …),
    each with the bare token after a ``Bearer``/``Basic`` scheme too."""
    out: list[str] = []
    for name, value in headers.items():
        if not isinstance(value, str) or not is_auth_header(name, value):
            continue
        out.append(value.strip())
        m = AUTH_VALUE.match(value)
        if m:
            out.append(m.group(2))
    return [v for v in dict.fromkeys(out) if v]
