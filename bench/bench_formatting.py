"""Formatting cost: ``bridge.formatting.render`` on typical replies, optionally vs another copy.

Run: ``.venv/bin/python bench/bench_formatting.py [--old PATH] [--number N]`` (not run by
pytest).  ``--old`` loads a second copy of the module from a file, e.g. the previous
version: ``git show HEAD~1:bridge/formatting.py > /tmp/old_formatting.py``.  Each reply
is rendered for Telegram HTML with the 4096 limit; the figure is the best of five runs
of ``--number`` calls, in microseconds per call.  Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import timeit
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge import formatting  # noqa: E402
from bridge.ports import Markup  # noqa: E402

_PROSE = " ".join(f"Sentence number {i} explains a detail of the solution." for i in range(48))
_CODE = "\n".join(f"    result_{i} = compute(value_{i}) < limit  # step {i}" for i in range(70))

REPLIES = {
    "plain, one line (fast path)": "Sure, I can help with that. What time works for you?",
    "short markdown": (
        "**Yes.** You can do it in two steps:\n\n1. Open *Settings*.\n2. Pick `Privacy`.\n\n"
        "See https://example.com/help for more."
    ),
    "medium: list + code": (
        "## Fix\n\nThe error comes from `parse()`:\n\n- it reads the **whole** file\n"
        "- then splits on `\\n`\n\n```python\ndef parse(path):\n    with open(path) as f:\n"
        "        return f.read().split('\\n')\n```\n\nTry [the docs](https://docs.python.org/3/) "
        "and tell me if it works. " + "It should be quick. " * 20
    ),
    "table": "| Name | Qty |\n|:-----|----:|\n" + "| apple | **3** |\n" * 12,
    "long: 9k with code": (
        "## Plan\n\n" + _PROSE + "\n\n```python\ndef main():\n" + _CODE + "\n```\n\n**Summary**: "
        + _PROSE[:2200]
    ),
}


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_formatting", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def per_call_us(module: ModuleType, text: str, number: int) -> float:
    timer = timeit.Timer(lambda: module.render(text, Markup.TELEGRAM_HTML, 4096))
    return min(timer.repeat(5, number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="a second copy of bridge/formatting.py to compare with")
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args()
    old = load(args.old) if args.old else None
    results = []
    print(f"{'reply':30} {'chars':>6} {'new µs':>9}" + (f" {'old µs':>9} {'new/old':>8}" if old else ""))
    for name, text in REPLIES.items():
        new_us = per_call_us(formatting, text, args.number)
        row: dict[str, object] = {"reply": name, "chars": len(text), "new_us": round(new_us, 1)}
        line = f"{name:30} {len(text):6} {new_us:9.1f}"
        if old is not None:
            old_us = per_call_us(old, text, args.number)
            row |= {"old_us": round(old_us, 1), "ratio": round(new_us / old_us, 2)}
            line += f" {old_us:9.1f} {new_us / old_us:8.2f}"
        results.append(row)
        print(line)
    print(json.dumps({"bench": "formatting", "results": results}))


if __name__ == "__main__":
    main()
