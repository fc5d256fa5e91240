"""End to end: ``palaver run`` (a subprocess) on the fake Bot API and the fake model
server; ``palaver chats model telegram:<group> <other model>`` from another process; the
next message in that group is answered by the other model, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.fakes.model_server import FakeModelServer
from tests.fakes.telegram_api import FakeBotAPI

ROOT = Path(__file__).resolve().parents[2]
GROUP = -1001234567890


def config_text(tmp_path: Path, fake: FakeBotAPI, models: FakeModelServer) -> str:
    return f"""\
// The operator's file: comments and layout must survive the pin.
{{
  dataDir: {json.dumps(str(tmp_path / "data"))},
  models: {{
    mode: "replace",
    providers: {{
      local: {{
        baseUrl: {json.dumps(models.url_for("openai-completions"))},
        api: "openai-completions",
        models: [
          {{ id: "text", contextWindow: 32000, maxTokens: 1000 }},
          {{ id: "other", contextWindow: 32000, maxTokens: 1000 }},
        ],
      }},
    }},
  }},
  agents: {{ defaults: {{ model: {{ primary: "local/text" }} }} }},
  channels: {{
    telegram: {{
      botToken: "${{E2E_BOT_TOKEN}}",
      apiRoot: {json.dumps(fake.url)},
      dmPolicy: "open", allowFrom: ["*"],
      groupPolicy: "open",
      groups: {{ "*": {{ requireMention: false }} }},  // every group, no mention needed
    }},
  }},
  health: {{ enabled: false }},
}}
"""


async def _collect(stream: asyncio.StreamReader, lines: list[str], seen: asyncio.Event
                   ) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            return
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        if "config reloaded" in line:
            seen.set()


@pytest.mark.timeout(90)
async def test_a_pin_from_another_process_answers_the_next_message(tmp_path):
    async with FakeBotAPI() as fake, FakeModelServer() as models:
        models.default(lambda req: f"answered by {req.json['model']}")
        path = tmp_path / "palaver.json5"
        path.write_text(config_text(tmp_path, fake, models))
        env = {**os.environ, "E2E_BOT_TOKEN": fake.token, "PYTHONPATH": str(ROOT)}
        run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "run", "--config", str(path), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        lines: list[str] = []
        reloaded = asyncio.Event()
        assert run.stderr is not None
        reader = asyncio.create_task(_collect(run.stderr, lines, reloaded))
        try:
            fake.push_text(GROUP, fake.user(1001, "Ann"), "first question",
                           chat_type="supergroup")
            (first,) = await fake.wait_for_sent(1, timeout=40)
            assert first.chat_id == GROUP and first.text == "answered by text"
            assert [r.json["model"] for r in models.requests if r.api == "completions"] \
                == ["text"]

            pin = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "chats", "model", f"telegram:{GROUP}",
                "local/other", "--config", str(path), cwd=ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(pin.communicate(), 30)
            assert pin.returncode == 0, err.decode()
            assert f"telegram:{GROUP} now: local/other" in out.decode()
            text = path.read_text()
            # The operator's comments are still there; the pin did not create a groups
            # entry (that would change who may talk in the group).
            assert "// every group, no mention needed" in text
            assert f'modelByChannel: {{ telegram: {{ "{GROUP}": "local/other" }} }}' in text

            await asyncio.wait_for(reloaded.wait(), 30)  # hot reload, no restart
            fake.push_text(GROUP, fake.user(1002, "Bob"), "second question",
                           chat_type="supergroup")
            await fake.wait_for_sent(2, timeout=40)
            assert fake.sent[1].chat_id == GROUP
            assert fake.sent[1].text == "answered by other"
            assert [r.json["model"] for r in models.requests if r.api == "completions"] \
                == ["text", "other"]
            assert run.returncode is None  # the same process answered both

            # `palaver chats` shows the chat, its next model and where it comes from.
            ls = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "chats", "--json", "--config", str(path),
                cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(ls.communicate(), 30)
            assert ls.returncode == 0, err.decode()
            (row,) = [json.loads(line) for line in out.decode().splitlines()]
            assert row["chat"] == f"telegram:{GROUP}" and row["kind"] == "group"
            assert row["model"] == "local/other" and "modelByChannel" in row["model_source"]
            assert row["messages"] >= 4 and row["pending"] == 0
        finally:
            if run.returncode is None:
                run.send_signal(signal.SIGTERM)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(run.wait(), 30)
                if run.returncode is None:
                    run.kill()
                    await run.wait()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        assert fake.token not in "".join(lines)
