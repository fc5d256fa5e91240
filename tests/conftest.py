"""Shared fixtures.  Nothing in the test suite reaches the internet."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Each test gets its own HOME and no ambient credentials or config."""
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY",
                "TELEGRAM_BOT_TOKEN", "PALAVER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    yield


# The fakes most end-to-end tests stand on (a module may define its own instead).


@pytest.fixture
async def fake():
    """A fake Telegram Bot API on 127.0.0.1."""
    from tests.fakes.telegram_api import FakeBotAPI

    async with FakeBotAPI() as server:
        yield server


@pytest.fixture
async def models():
    """A fake model server on 127.0.0.1 (Responses, Chat Completions, Messages)."""
    from tests.fakes.model_server import FakeModelServer

    async with FakeModelServer() as server:
        yield server


@pytest.fixture
async def run_app():
    """``await run_app(config)``: a started App, stopped when the test ends."""
    from bridge.app import App

    apps: list[App] = []

    async def start(config) -> App:
        app = App(config)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(grace=0)


# ------------------------------------------------------------ the store on both backends
#
# PostgreSQL for the tests: $PALAVER_TEST_PG_URL (a server .ci/run starts), else a private
# throwaway cluster started here when the server binaries exist (Debian's postgresql
# package), else none: the PostgreSQL half of the store suite then skips LOUDLY (a line
# in the terminal summary), and fails under CI=true.

PG_URL_ENV = "PALAVER_TEST_PG_URL"
_PG_SKIPPED: list[str] = []


def _pg_binaries() -> tuple[str, str] | None:
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in p.split("/")[4].split(".") if x.isdigit()])
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb:
        return None
    pg_ctl = os.path.join(os.path.dirname(initdb), "pg_ctl")
    return (initdb, pg_ctl) if os.path.exists(pg_ctl) else None


def _start_private_pg():
    """Start a throwaway cluster (fsync off, trust auth, unix socket in a temp dir plus
    127.0.0.1 on a free port); returns (url, stop) or None.  initdb refuses to run as
    root, so as root the cluster runs as the ``postgres`` user (runuser)."""
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bins = _pg_binaries()
    if bins is None:
        return None
    initdb, pg_ctl = bins
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="palaver-pg.")  # short: a socket path is < 107 bytes
    if as_root:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            return None
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    os.chmod(root, 0o700)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = os.path.join(root, "data")
    try:
        subprocess.run([*prefix, initdb, "-D", data, "-U", "palaver", "--auth=trust",
                        "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*prefix, pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w",
                        "-t", "60", "start", "-o",
                        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
                        " -c synchronous_commit=off -c full_page_writes=off"
                        " -c max_connections=300"],
                       check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(root, ignore_errors=True)
        return None

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql://palaver@127.0.0.1:{port}/postgres", stop


def _pg_admin(url: str, *statements: str) -> None:
    """Run statements on ``url`` from a thread of its own (no test event loop involved)."""
    import asyncio
    import threading

    errors: list[BaseException] = []

    async def go() -> None:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=30)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def main() -> None:
        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def pg_server():
    """The URL of a PostgreSQL server's maintenance database (``.../postgres``) whose role
    may create databases, or None when there is none."""
    url = os.environ.get(PG_URL_ENV)
    if url:
        yield url
        return
    started = _start_private_pg()
    if started is None:
        yield None
        return
    url, stop = started
    try:
        yield url
    finally:
        stop()


def _skip_without_pg(request) -> None:
    why = (f"no PostgreSQL server: set {PG_URL_ENV}, or apt-get install postgresql")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the PostgreSQL store tests ({why})")
    _PG_SKIPPED.append(request.node.nodeid)
    pytest.skip(why)


@pytest.fixture
def pg_url(pg_server, request):
    """A fresh, empty database on the test server (one per test: LISTEN channels and
    advisory locks are per database), dropped afterwards."""
    import uuid

    if pg_server is None:
        _skip_without_pg(request)
    name = "t_" + uuid.uuid4().hex[:16]
    _pg_admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE template0')
    head, _, _ = pg_server.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        _pg_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request) -> str:
    """Each store test once per backend."""
    return request.param


@pytest.fixture
async def open_store(store_backend, request, tmp_path):
    """``await open_store()``: a Store on this test's database (the same one each call:
    a second process's view), closed at the end; ``open_store(migrations=...)`` too."""
    from bridge.store import Store

    url = request.getfixturevalue("pg_url") if store_backend == "postgresql" else None
    opened: list = []

    async def open_(**kwargs):
        if url is not None:
            store = await Store.open_url(url, **kwargs)
        else:
            store = await Store.open(tmp_path / "p.db", **kwargs)
        opened.append(store)
        return store

    open_.url = url  # type: ignore[attr-defined]
    open_.path = tmp_path / "p.db"  # type: ignore[attr-defined]
    yield open_
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store):
    """A migrated Store on SQLite, then on PostgreSQL (a fresh database each)."""
    return await open_store()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _PG_SKIPPED:
        terminalreporter.write_line(
            f"!!! POSTGRESQL TESTS SKIPPED: {len(_PG_SKIPPED)} (no server: apt-get install"
            f" postgresql, or set {PG_URL_ENV}) !!!", red=True, bold=True)
