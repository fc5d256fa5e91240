"""Hot reload: valid edits are swapped in and announced, invalid ones are logged and ignored."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from bridge.config.load import load_config
from bridge.config.watch import LiveConfig

BASE = """{
  models: { mode: "replace", providers: { local: { baseUrl: "http://127.0.0.1:1234/v1",
    models: [{ id: "a" }, { id: "b" }] } } },
  agents: { defaults: { model: "local/%s", models: { "local/b": { alias: "%s" } } } },
}"""


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "palaver.json5"
    path.write_text(BASE % ("a", "Bee"))
    return path


async def started(path, interval=0.02):
    live = LiveConfig(load_config(path, env={}), path, interval=interval, env={})
    await live.start()
    return live


async def test_valid_edit_is_swapped_in_and_subscribers_notified(cfg_file):
    live = await started(cfg_file)
    seen_sync: list = []
    seen_async = asyncio.Event()

    async def on_async(config):
        seen_async.set()

    live.subscribe(seen_sync.append)
    live.subscribe(on_async)
    old = live.current
    try:
        assert old.default_selection().primary == "local/a"
        cfg_file.write_text(BASE % ("b", "Buzz"))
        await asyncio.wait_for(seen_async.wait(), 5)
        assert live.current is not old
        assert live.current.default_selection().primary == "local/b"
        assert live.current.resolve_ref("buzz") == "local/b"  # aliases change too
        assert seen_sync == [live.current]
        assert old.default_selection().primary == "local/a"  # the old object is untouched
    finally:
        await live.stop()


async def test_invalid_edit_keeps_running_config_and_logs(cfg_file, caplog):
    caplog.set_level(logging.ERROR, logger="bridge.config.watch")
    live = await started(cfg_file)
    calls: list = []
    live.subscribe(calls.append)
    old = live.current
    try:
        cfg_file.write_text(BASE % ("zzz", "Bee"))  # unknown model on a listed provider
        for _ in range(250):
            if caplog.records:
                break
            await asyncio.sleep(0.02)
        assert live.current is old and calls == []
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "agents.defaults.model" in record.getMessage()
        assert "lists no model 'zzz'" in record.getMessage()
        assert record.exc_info is None  # a message, not a traceback
        # The broken file is not re-reported every poll; a fix is picked up.
        await asyncio.sleep(0.1)
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        cfg_file.write_text(BASE % ("b", "Bee"))
        for _ in range(250):
            if calls:
                break
            await asyncio.sleep(0.02)
        assert live.current.default_selection().primary == "local/b"
    finally:
        await live.stop()


async def test_reload_returns_whether_it_swapped(cfg_file):
    live = LiveConfig(load_config(cfg_file, env={}), cfg_file, env={})
    cfg_file.write_text("{ nope")
    assert await live.reload() is False
    cfg_file.write_text(BASE % ("b", "Bee"))
    assert await live.reload() is True
    assert live.current.default_selection().primary == "local/b"


async def test_unchanged_content_does_not_reload(cfg_file):
    live = await started(cfg_file)
    calls: list = []
    live.subscribe(calls.append)
    try:
        cfg_file.write_text(cfg_file.read_text())  # new mtime, same bytes
        await asyncio.sleep(0.15)
        assert calls == []
    finally:
        await live.stop()


async def test_sighup_triggers_reload(cfg_file):
    live = await started(cfg_file, interval=3600)  # only the signal can reload
    done = asyncio.Event()
    live.subscribe(lambda config: done.set())
    try:
        # Guard: without a handler SIGHUP would end the test run.
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        cfg_file.write_text(BASE % ("b", "Bee"))
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(done.wait(), 5)
        assert live.current.default_selection().primary == "local/b"
    finally:
        await live.stop()


async def test_failing_subscriber_does_not_block_others(cfg_file, caplog):
    live = LiveConfig(load_config(cfg_file, env={}), cfg_file, env={})
    got: list = []

    def broken(config):
        raise RuntimeError("subscriber bug")

    live.subscribe(broken)
    unsubscribe = live.subscribe(got.append)
    cfg_file.write_text(BASE % ("b", "Bee"))
    assert await live.reload() is True
    assert got == [live.current]
    assert "subscriber bug" in caplog.text
    unsubscribe()
    assert await live.reload() is True
    assert len(got) == 1


async def test_stop_cancels_every_task(cfg_file):
    before = asyncio.all_tasks()
    live = await started(cfg_file)
    assert len(asyncio.all_tasks() - before) == 1
    await live.stop()
    assert asyncio.all_tasks() == before
    await live.stop()  # idempotent


@pytest.mark.parametrize("how", ["constructor", "load"])
async def test_edit_made_while_starting_is_loaded_by_start(cfg_file, how):
    # cmd_run loads the config, then discovery and channels start (seconds), then the
    # watcher: an edit saved in between must not be lost.
    if how == "constructor":
        live = LiveConfig(load_config(cfg_file, env={}), cfg_file, interval=0.02, env={})
    else:
        live = LiveConfig.load(cfg_file, interval=0.02, env={})
    cfg_file.write_text(BASE % ("b", "Bee"))
    swapped = []
    live.subscribe(swapped.append)
    await live.start()
    try:
        assert live.current.default_selection().primary == "local/b"
        assert len(swapped) == 1
        await asyncio.sleep(0.1)
        assert len(swapped) == 1  # and the poller does not load it a second time
    finally:
        await live.stop()


async def test_start_without_an_edit_does_not_reload(cfg_file):
    live = LiveConfig.load(cfg_file, interval=0.02, env={})
    swapped = []
    live.subscribe(swapped.append)
    await live.start()
    await asyncio.sleep(0.08)
    await live.stop()
    assert swapped == [] and live.current.default_selection().primary == "local/a"
