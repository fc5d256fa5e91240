"""Login for the console: the token file, one-time login links, sessions, CSRF tokens and
the failed-login limit.

The token (``<dataDir>/console.token``, owner-only) never leaves the machine: a login link
carries a random nonce, an expiry and an HMAC of both keyed by the token, so only someone
who can read the file (``palaver console``) can make one.  The server accepts each nonce
once and only before its expiry, then hands out a session id (cookie) and a CSRF token;
both live in this process's memory only (a restart logs everybody out).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_FILE = "console.token"
LINK_TTL_S = 300.0  # a login link works for five minutes, once
SESSION_IDLE_S = 12 * 3600.0
SESSION_MAX_S = 7 * 24 * 3600.0
MAX_SESSIONS = 64
FAILED_LOGINS = 5  # per client address ...
FAILED_WINDOW_S = 300.0  # ... within this window, then refused until the window passes
COOKIE = "palaver_console"


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def read_or_create_token(data_dir: Path) -> str:
    """The console token, created (random, mode 0600) when the file does not exist yet.

    An existing file readable by others is narrowed to the owner."""
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        token = path.read_text("utf-8").strip()
        if len(token) >= 32:
            return token
        # Empty or truncated (a crash while writing): start over.
        path.unlink()
        return read_or_create_token(data_dir)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(token: str, nonce: str, expires: int) -> str:
    digest = hmac.new(token.encode("utf-8"), f"palaver-console-login|{nonce}|{expires}".encode(),
                      hashlib.sha256).digest()
    return _b64(digest)


def login_link_secret(token: str, *, now: float | None = None, ttl_s: float = LINK_TTL_S) -> str:
    """The ``k`` parameter of a one-time login link: ``nonce.expiry.mac``."""
    now = time.time() if now is None else now
    nonce = _b64(secrets.token_bytes(18))
    expires = int(now + ttl_s)
    return f"{nonce}.{expires}.{_mac(token, nonce, expires)}"


@dataclass
class Session:
    sid: str
    csrf: str
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # shown once, next page


@dataclass
class ConsoleAuth:
    """Checks login links, keeps sessions, limits failed logins.  ``clock``: for tests."""

    token: str
    clock: Callable[[], float] = time.time
    link_ttl_s: float = LINK_TTL_S
    _used: dict[str, float] = field(default_factory=dict)  # nonce -> its expiry
    _sessions: dict[str, Session] = field(default_factory=dict)
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    # -- login links -------------------------------------------------------------

    def make_link_secret(self) -> str:
        return login_link_secret(self.token, now=self.clock(), ttl_s=self.link_ttl_s)

    def redeem(self, secret: str) -> str | None:
        """Accept a login link's secret once: the reason it is refused, or None if good."""
        now = self.clock()
        for nonce, expires in list(self._used.items()):
            if expires < now:
                del self._used[nonce]
        parts = secret.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return "not a login link"
        nonce, expires_text, mac = parts
        expires = int(expires_text)
        if not hmac.compare_digest(mac.encode(), _mac(self.token, nonce, expires).encode()):
            return "not a login link of this Palaver"
        if expires < now:
            return "this login link has expired"
        if expires > now + self.link_ttl_s + 60:
            return "not a login link of this Palaver"
        if nonce in self._used:
            return "this login link was used already"
        self._used[nonce] = float(expires)
        return None

    # -- failed logins -----------------------------------------------------------

    def _window(self, client: str) -> deque[float]:
        now = self.clock()
        seen = self._failures.setdefault(client, deque())
        while seen and seen[0] <= now - FAILED_WINDOW_S:
            seen.popleft()
        return seen

    def locked_out(self, client: str) -> bool:
        """Too many failed logins from ``client`` lately (every client together counts too,
        so changing addresses does not help)."""
        total = sum(len(self._window(c)) for c in list(self._failures))
        return len(self._window(client)) >= FAILED_LOGINS or total >= FAILED_LOGINS * 4

    def failed(self, client: str) -> None:
        self._window(client).append(self.clock())
        if len(self._failures) > 1000:  # many addresses: keep the busiest windows
            for c in [c for c, d in self._failures.items() if not d][:500]:
                del self._failures[c]

    # -- sessions ----------------------------------------------------------------

    def new_session(self) -> Session:
        now = self.clock()
        self._expire(now)
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
            del self._sessions[oldest.sid]
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._sessions[s.sid] = s
        return s

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = self.clock()
        self._expire(now)
        s = self._sessions.get(sid)
        if s is not None:
            s.last_seen = now
        return s

    def end(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def _expire(self, now: float) -> None:
        for sid, s in list(self._sessions.items()):
            if s.last_seen < now - SESSION_IDLE_S or s.created < now - SESSION_MAX_S:
                del self._sessions[sid]

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())
