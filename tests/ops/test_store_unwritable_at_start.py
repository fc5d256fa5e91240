"""``palaver run`` refuses a store it cannot write: one line on stderr, exit 2.

The database file is made genuinely read-only: ``chmod 0444`` for a normal user; as root
(who ignores file modes) a read-only bind mount of the file onto itself.  The real
``palaver run`` runs as a subprocess: before the fix it started, polled and would have
confirmed messages it never stored (here: it kept running until the timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import EXIT_UNUSABLE
from bridge.store import DB_FILENAME, Store, StoreError

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` read-only for this process, for real (not an injected error)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    bind = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"running as root without mount: {bind.stderr.decode().strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.decode().strip()}")
        yield
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


async def _existing_store(data: Path) -> Path:
    store = await Store.open_in(data)
    await store.close()
    return data / DB_FILENAME


async def test_store_open_refuses_a_read_only_database(tmp_path):
    db = await _existing_store(tmp_path / "data")
    with read_only(db):
        with pytest.raises(StoreError, match="cannot write the database .*read-only"):
            await Store.open(db)


async def test_palaver_run_exits_2_on_a_read_only_store(tmp_path):
    data = tmp_path / "data"
    db = await _existing_store(data)
    config = tmp_path / "palaver.json5"
    config.write_text(json.dumps({
        "dataDir": str(data),
        "models": {"mode": "replace", "providers": {"local": {
            "baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions",
            "models": [{"id": "m", "contextWindow": 32000, "maxTokens": 1000}]}}},
        "agents": {"defaults": {"model": {"primary": "local/m"}}},
        "channels": {"telegram": {"botToken": "123456:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                  "apiRoot": "http://127.0.0.1:9", "dmPolicy": "open",
                                  "allowFrom": ["*"]}},
        "health": {"enabled": False},
    }))
    with read_only(db):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "run", "--config", str(config), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail("palaver run kept running on a read-only store")
    assert proc.returncode == EXIT_UNUSABLE
    lines = [line for line in err.decode().splitlines() if line.startswith("palaver:")]
    assert len(lines) == 1, err.decode()
    assert "cannot write the database" in lines[0] and "read-only" in lines[0]
    assert "Traceback" not in err.decode()
