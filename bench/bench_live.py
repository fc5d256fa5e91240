"""Live replies (issue 17): when the user first sees answer text, with and without streaming.

On the fakes, the whole way (as ``bench_e2e.py``): ``FakeBotAPI`` -> the real Telegram
adapter -> ``App`` -> ``ModelRouter`` -> a ``FakeModelServer`` (Chat Completions) that
writes **20 tokens a second** (one word per SSE chunk, 50 ms apart) for a 200-token
answer, about 10 s.  One private chat; Telegram's flood pacing on (``--unpaced`` turns
it off), so previews compete with the final for the real budget.

Per streaming mode (``off``, ``draft``, ``edit``) and per model setting:

- ``auto``: ``thinkTags: "auto"`` and a plain model (no tags, no reasoning channel): the
  reasoning filter holds the text until the stream ends, since a lone ``</think>`` could
  still turn it into reasoning;
- ``paired``: ``thinkTags: "paired"``: the text flows at once;
- ``auto+rc``: ``"auto"`` with a ``reasoning_content`` preamble (the server parses
  reasoning, so the filter releases the answer at once);

it reports, from the user's message being available in the fake:

- **first text**: the first ``sendMessageDraft`` / ``sendMessage`` / ``editMessageText``
  carrying answer text (its first word), i.e. when the user first sees the answer;
- **final**: the turn delivered (the last call of the final message);
- **Bot API calls per reply** by method (``sendMessageDraft``, ``editMessageText``,
  ``sendMessage``, ``sendChatAction``, ``setMessageReaction``, ``deleteMessage``).

Usage: ``python bench/bench_live.py [--replies N] [--tokens N] [--tps N] [--modes
off,draft,edit] [--models auto,paired,auto+rc] [--unpaced] [--quick]``.  Prints a table
and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import InProcess, config_dict, machine, provider  # noqa: E402

from tests.fakes.model_server import FakeModelServer, words  # noqa: E402
from tests.fakes.telegram_api import FakeBotAPI  # noqa: E402

METHODS = ("sendMessageDraft", "editMessageText", "sendMessage", "sendChatAction",
           "setMessageReaction", "deleteMessage")
SHOWN = ("sendMessageDraft", "sendMessage", "editMessageText")
FIRST = "Certainly,"
SENTENCE = ("the quick answer to your question depends on a few things that are worth "
            "spelling out one by one before we get to the details .").split()
CHAT = 4242


def answer(tokens: int) -> str:
    body = [SENTENCE[i % len(SENTENCE)] for i in range(tokens - 1)]
    return " ".join([FIRST, *body])


def model_provider(base_url: str, setting: str) -> dict[str, Any]:
    out = provider(base_url)
    out["models"][0]["maxTokens"] = 4000
    out["thinkTags"] = "paired" if setting == "paired" else "auto"
    return out


async def one_scenario(mode: str, setting: str, args: argparse.Namespace) -> dict[str, Any]:
    text = answer(args.tokens)
    reasoning = "the user asks a question; plan the answer" if setting == "auto+rc" else None
    async with FakeBotAPI() as fake, FakeModelServer() as models:
        models.default(words(text), delay=1 / args.tps, reasoning=reasoning)
        with tempfile.TemporaryDirectory(prefix="palaver-bench-live-") as tmp:
            config = config_dict(Path(tmp) / "data", fake,
                                 {"local": model_provider(models.base_url, setting)},
                                 primary="local/m")
            config["channels"]["telegram"]["streaming"] = mode
            palaver = InProcess(config, paced=not args.unpaced)
            await palaver.start()
            firsts: list[float] = []
            finals: list[float] = []
            per_method: Counter[str] = Counter()
            try:
                for i in range(args.replies):
                    start_calls = len(fake.calls)
                    fake.push_text(CHAT, CHAT, f"question {i}: tell me everything")
                    pushed = time.monotonic()
                    await palaver.wait_answered(i + 1, timeout=args.tokens / args.tps * 6 + 30)
                    # The last call of the final may land just after the turn event.
                    await asyncio.sleep(0.3)
                    calls = fake.calls[start_calls:]
                    per_method.update(c.method for c in calls if c.method in METHODS)
                    shown = [c.time for c in calls if c.method in SHOWN
                             and FIRST in str(c.params.get("text", ""))]
                    finals_at = [c.time for c in calls if c.method in ("sendMessage",
                                                                        "editMessageText")]
                    if not shown or not finals_at:
                        raise AssertionError(f"{mode}/{setting}: no answer text reached the "
                                             f"fake ({Counter(c.method for c in calls)})")
                    firsts.append(shown[0] - pushed)
                    finals.append(finals_at[-1] - pushed)
                    if i + 1 < args.replies:
                        await asyncio.sleep(1.1)  # the chat's pacing slot, between replies
            finally:
                await palaver.stop()
    n = args.replies
    return {"mode": mode, "model": setting,
            "first_text_s": round(statistics.median(firsts), 3),
            "final_s": round(statistics.median(finals), 3),
            "calls_per_reply": {m: round(per_method[m] / n, 2) for m in METHODS}}


def print_rows(rows: list[dict[str, Any]]) -> None:
    short = {"sendMessageDraft": "draft", "editMessageText": "edit", "sendMessage": "send",
             "sendChatAction": "typing", "setMessageReaction": "react",
             "deleteMessage": "delete"}
    head = f"{'mode':<6} {'model':<8} {'first text s':>12} {'final s':>8}  " + " ".join(
        f"{short[m]:>6}" for m in METHODS)
    print(head)
    for r in rows:
        calls = " ".join(f"{r['calls_per_reply'][m]:>6g}" for m in METHODS)
        print(f"{r['mode']:<6} {r['model']:<8} {r['first_text_s']:>12.2f} "
              f"{r['final_s']:>8.2f}  {calls}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--replies", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument("--modes", default="off,draft,edit")
    parser.add_argument("--models", default="auto,paired,auto+rc")
    parser.add_argument("--unpaced", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 reply, 60 tokens")
    args = parser.parse_args()
    if args.quick:
        args.replies, args.tokens = 1, 60
    rows = []
    for mode in args.modes.split(","):
        for setting in args.models.split(","):
            rows.append(await one_scenario(mode, setting, args))
            print_rows(rows[-1:])
            sys.stdout.flush()
    print(f"\nLive replies: {args.tokens} tokens at {args.tps:g} tokens/s, "
          f"{args.replies} replies each, paced={not args.unpaced}; medians "
          "(from the user's message)")
    print_rows(rows)
    print(json.dumps({"bench": "live", "tokens": args.tokens, "tps": args.tps,
                      "replies": args.replies, "paced": not args.unpaced,
                      "machine": machine(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
