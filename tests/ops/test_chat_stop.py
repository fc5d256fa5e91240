"""``/stop`` in ``palaver chat`` (issue 17): typed while the answer is being written, it
reaches the core at once — the model's stream is closed, "Stopped." is printed, the next
line is answered and the exit status is 0."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path

from bridge.config.load import load_config_text
from bridge.run import chat
from tests.channels.test_whatsapp_fake import until
from tests.fakes.model_server import FakeModelServer

REPO = Path(__file__).resolve().parents[2]
SLOW = " ".join(f"word{n}" for n in range(30))


def _config_text(tmp_path, server: FakeModelServer) -> str:
    return json.dumps({
        "dataDir": str(tmp_path / "data"),
        "health": {"enabled": False},
        "models": {"mode": "replace", "providers": {
            "fake": {"baseUrl": server.base_url, "api": "openai-completions",
                     "models": [{"id": "fake-model"}]}}},
        "agents": {"defaults": {"model": {"primary": "fake/fake-model"}}},
    })


async def test_stop_typed_mid_answer_in_palaver_chat(tmp_path, models):
    models.reply(SLOW, chunks=30, delay=0.5)  # 15 s unless stopped
    models.reply("Next answer.")
    path = tmp_path / "palaver.json5"
    path.write_text(_config_text(tmp_path, models))
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "chat", "-c", str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=str(tmp_path))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"tell me a long story\n")
        await proc.stdin.drain()
        await until(lambda: models.requests and models.requests[0].chunks_written >= 2, 30)
        request = models.requests[0]
        proc.stdin.write(b"/stop\n")
        await proc.stdin.drain()
        await asyncio.wait_for(request.closed.wait(), 10)
        first = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert first == b"Stopped.\n"
        proc.stdin.write(b"what next?\n")
        await proc.stdin.drain()
        proc.stdin.close()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["Next answer."]
    assert len(models.requests) == 2
    assert "what next?" in models.requests[1].last_user_text()
    assert "long story" not in models.requests[1].last_user_text()


async def test_lines_typed_mid_answer_wait_their_turn(tmp_path, models):
    """Only /stop jumps the queue: other lines read while a turn runs are answered one
    turn each, in order, as before."""
    models.reply("one").reply("two").reply("three")
    config = load_config_text(_config_text(tmp_path, models))
    stdout = io.StringIO()
    code = await chat(config, stdin=io.StringIO("a\nb\nc\n"), stdout=stdout,
                      interactive=False)
    assert code == 0
    assert stdout.getvalue().splitlines() == ["one", "two", "three"]
    assert [r.last_user_text()[-1] for r in models.requests] == ["a", "b", "c"]
