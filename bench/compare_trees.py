"""Two checkouts of Palaver, one run: ``bench_e2e.py`` latency and throughput, alternated.

Speed is compared as ratios measured in one run on one machine, never against figures
from another day: this script runs each benchmark for the checkout under test (this
repository) and for a baseline checkout (another commit's work tree, e.g. made with
``git worktree add /tmp/palaver-old <commit>``), alternating A, B, A, B ... so that drift
of a shared machine falls on both.  Each side runs with its own tree first on
``PYTHONPATH`` (the benchmark, its harness, the fakes and Palaver all come from that
tree), in the same virtualenv.

Usage: ``python bench/compare_trees.py BASELINE_DIR [--rounds 3] [--quick]``.
Prints a table (median per side and new/old ratio) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# bench -> (JSON field, "lower" or "higher" is better)
METRICS = {
    "latency": [("p50_ms", "lower"), ("p95_ms", "lower"), ("p99_ms", "lower"),
                ("cpu_ms_per_message", "lower")],
    "throughput": [("messages_per_s", "higher"), ("cpu_ms_per_message", "lower")],
}


def run_one(tree: Path, bench: str, quick: bool) -> dict:
    """Run ``bench_e2e.py <bench> --split`` from ``tree``; its JSON line."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(tree / "bench" / "bench_e2e.py"), bench, "--split"]
    if quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                         timeout=900, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON line from {' '.join(cmd)}:\n{out}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="work tree of the baseline commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    trees = {"new": HERE, "old": args.baseline.resolve()}
    results: dict[str, dict[str, list[dict]]] = {b: {"new": [], "old": []} for b in METRICS}
    for round_no in range(args.rounds):
        for bench in METRICS:
            order = ("new", "old") if round_no % 2 == 0 else ("old", "new")
            for side in order:
                result = run_one(trees[side], bench, args.quick)
                if not result.get("verified", True):
                    raise RuntimeError(f"{side} {bench}: not verified: {result.get('problems')}")
                results[bench][side].append(result)
                print(f"round {round_no + 1} {bench:<10} {side}: "
                      + ", ".join(f"{k}={result[k]}" for k, _ in METRICS[bench]), flush=True)
    summary: dict[str, dict[str, float]] = {}
    print(f"\n{'metric':<34}{'old':>10}{'new':>10}{'new/old':>9}  better")
    for bench, fields in METRICS.items():
        for field, better in fields:
            old = statistics.median(r[field] for r in results[bench]["old"])
            new = statistics.median(r[field] for r in results[bench]["new"])
            ratio = new / old if old else float("nan")
            summary[f"{bench}.{field}"] = {"old": old, "new": new, "ratio": round(ratio, 3)}
            print(f"{bench + '.' + field:<34}{old:>10.3f}{new:>10.3f}{ratio:>9.3f}  {better}")
    print(json.dumps({"bench": "compare-trees", "rounds": args.rounds,
                      "baseline": str(trees["old"]), "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
