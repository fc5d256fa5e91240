"""Several Palavers on one store: SQLite with one process against PostgreSQL with 1, 2 and
4 processes, in one run (issue 20; not run by pytest).

Real ``palaver run`` processes (:class:`tests.cluster.palaver_cluster.Cluster`, the same
as ``tests/cluster/test_webhook_cluster.py``) with Telegram in webhook mode against the
fake Bot API and the fake model server answering after ``--model-ms`` (10 ms).  A
round-robin load balancer (:class:`tests.cluster.palaver_cluster.Poster`) posts each
chat's messages in order, each once the previous got its 200, message m of chat c to
process (c + m) mod n.  The model's reply names every message of its turn, so each
message's reply is found in the fake.

Per setup: messages/s (all messages / first post to last ``sendMessage``), p50/p95 of
accept -> send (the 200 for the update to the ``sendMessage`` naming it), replies
(messages arriving mid-turn are answered together in one), messages named by more than one reply (must be
0), and where the time goes: CPU seconds of the
Palaver processes, of the PostgreSQL server (its postmaster and children in /proc, with
the exited backends the postmaster reaped) and of this driver (the fakes and the load
balancer), each per message; and PostgreSQL commits and statement time per message
(pg_stat_database's ``xact_commit`` and ``active_time``), and the statements that took
the server's time (pg_stat_statements: the private server is restarted with it
preloaded; a ``$PALAVER_TEST_PG_URL`` server is used as it is).
Everything shares the machine's cores: with 2 cores, four Palavers, the server and the
fakes compete for them, and the figures say so.

PostgreSQL: ``$PALAVER_TEST_PG_URL`` (a maintenance database whose role may create
databases), else a private throwaway cluster as the tests start one (tests/conftest.py).

Usage: ``python bench/bench_cluster.py [--chats 50] [--messages 20] [--processes 1,2,4]
[--model-ms 10] [--paced] [--no-sqlite] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from harness import machine, percentiles  # noqa: E402

from tests.cluster.palaver_cluster import Cluster, Member, Poster  # noqa: E402
from tests.conftest import (  # noqa: E402
    PG_URL_ENV,
    _pg_admin,
    _pg_binaries,
    _start_private_pg,
)
from tests.fakes.model_server import FakeModelServer, RecordedRequest  # noqa: E402
from tests.fakes.telegram_api import FakeBotAPI  # noqa: E402

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
TOKEN = re.compile(r"\bc(\d+)m(\d+)\b")
FIRST_CHAT = 1001
TICK = os.sysconf("SC_CLK_TCK")


# ``palaver run`` with Telegram's flood pacing off (as bench_e2e.py does unless --paced):
# about 30 sends a second per process and one a second per chat are the platform's limit,
# and would be what this measures instead of Palaver and its store.
UNPACED = ("import sys; from channels.telegram.channel import TelegramChannel as T; "
           "T.pace_chat_interval = T.pace_group_interval = T.pace_overall_interval = 0; "
           "from bridge.cli import main; sys.exit(main(sys.argv[1:]))")


class BenchCluster(Cluster):
    """:class:`Cluster` whose processes run unpaced (``--paced`` keeps the pacing)."""

    paced = False

    async def start(self, member: Member, *, limit_s: float = 90.0) -> None:
        if self.paced:
            await super().start(member, limit_s=limit_s)
            return
        env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
        env.pop("PALAVER_DATABASE_URL", None)
        with member.log_path.open("ab") as log:
            member.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", UNPACED, "run", "-c", str(member.config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd=str(member.config_path.parent))
        await self.wait_ready(member, limit_s=limit_s)


class SQLiteCluster(BenchCluster):
    """The same process, its store SQLite in its dataDir (no ``store.url``)."""

    def config(self, member: Member) -> dict[str, Any]:
        out = super().config(member)
        out["store"].pop("url")
        return out


# ----------------------------------------------------------------------------- /proc


def _stat(pid: int | str) -> tuple[str, int, float, float] | None:
    """(comm, ppid, own CPU s, reaped children's CPU s) from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is state (stat field 3): utime is field 14, cstime field 17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return comm, int(fields[1]), (utime + stime) / TICK, (cutime + cstime) / TICK


def cpu_of(pids: list[int]) -> float:
    return sum(s[2] for s in map(_stat, pids) if s is not None)


def postgres_cpu(postmaster: int | None) -> float | None:
    """CPU seconds of this PostgreSQL server: its postmaster, its live children, and what
    the postmaster reaped (backends that exited).  Other servers on the machine (other
    people's tests) are not counted.  None when the server is not on this machine."""
    if postmaster is None or (root := _stat(postmaster)) is None:
        return None
    total = root[2] + root[3]
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(entry)) is not None and s[1] == postmaster:
            total += s[2]
    return total


async def postmaster_of(url: str) -> int | None:
    """The pid of the server's postmaster when it runs here (a backend's parent)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:  # read while the backend lives
        found = _stat(int(await conn.fetchval("SELECT pg_backend_pid()")))
    finally:
        await conn.close()
    return found[1] if found is not None and found[0] == "postgres" else None


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# ----------------------------------------------------------------------------- one run


def _acknowledge(request: RecordedRequest) -> str:
    """Names every message of this turn (the user messages after the last reply)."""
    messages = request.json["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    text = " ".join(str(m.get("content")) for m in messages[last + 1:] if m["role"] == "user")
    return "ack " + " ".join(f"c{c}m{m}" for c, m in TOKEN.findall(text))


async def _pg_counters(url: str) -> tuple[int, float]:
    """(commits, ms the server spent executing statements) in the bench's database, from
    pg_stat_database (``active_time``: PostgreSQL 14 and later; the statistics are sent by
    each backend at most once a second, so the figures lag by up to that)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await asyncio.sleep(1.1)  # let the backends' statistics reach the collector
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT xact_commit, active_time FROM pg_stat_database"
            " WHERE datname = current_database()")
        return int(row["xact_commit"]), float(row["active_time"] or 0.0)
    finally:
        await conn.close()


async def preload_pg_stat_statements(server: str) -> bool:
    """Restart the private server with pg_stat_statements preloaded (it must be, for the
    extension to count); False when that fails (the figures then go without it)."""
    import subprocess

    import asyncpg

    bins = _pg_binaries()
    if bins is None:
        return False
    conn = await asyncpg.connect(server)
    try:
        data = str(await conn.fetchval("SHOW data_directory"))
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    finally:
        await conn.close()
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # -l: a server left writing to our pipe would keep subprocess.run waiting forever.
    done = await asyncio.to_thread(
        subprocess.run, [*prefix, bins[1], "-D", data, "-l",
                         os.path.join(os.path.dirname(data), "log"), "-w", "-t", "60",
                         "-m", "fast", "restart"], capture_output=True, timeout=120)
    return done.returncode == 0


async def _statements(url: str, *, reset: bool) -> list[dict[str, Any]]:
    """pg_stat_statements for this database (empty when the extension is not loaded);
    ``reset`` clears it first and returns nothing."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        if reset:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
            return []
        rows = await conn.fetch(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()"
            " ORDER BY total_exec_time DESC")
        return [dict(r) for r in rows]
    except asyncpg.PostgresError:
        return []
    finally:
        await conn.close()


async def run_setup(label: str, processes: int, pg_url: str | None, args) -> dict[str, Any]:
    chats, per_chat = args.chats, args.messages
    async with FakeBotAPI() as fake, FakeModelServer() as models:
        models.default(_acknowledge, think=args.model_ms / 1000)
        tmp = Path(tempfile.mkdtemp(prefix=f"palaver-bench-{label}."))
        kind = BenchCluster if pg_url else SQLiteCluster
        cluster = kind(tmp, pg_url or "", fake.token, fake.url,
                       models.url_for("openai-completions"), lease_s=args.lease)
        cluster.paced = args.paced
        try:
            members = [cluster.add() for _ in range(processes)]
            for member in members:  # one after the other: the first migrates
                await cluster.start(member)
            await asyncio.sleep(1.0)  # the peers find each other (a 0.5 s cache)
            pids = [m.pid for m in members]
            postmaster = await postmaster_of(pg_url) if pg_url else None
            cpu0 = (cpu_of(pids), postgres_cpu(postmaster), self_cpu())
            counters0 = await _pg_counters(pg_url) if pg_url else (0, 0.0)
            if pg_url and args.statements:
                await _statements(pg_url, reset=True)
            accepted: dict[tuple[int, int], float] = {}
            update_ids = iter(range(1, chats * per_chat + 1))
            began = time.monotonic()

            async def chat(poster: Poster, c: int) -> None:
                chat_id = FIRST_CHAT + c
                for m in range(per_chat):
                    msg = fake.push_text(chat_id, chat_id, f"c{c}m{m}")
                    await poster.post({"update_id": next(update_ids), "message": msg},
                                      first=c + m)
                    accepted[(c, m)] = time.monotonic()

            async with Poster(members, timeout=120) as poster:
                await asyncio.gather(*(chat(poster, c) for c in range(chats)))
            sent: dict[tuple[int, int], float] = {}
            want = chats * per_chat

            def done() -> bool:
                sent.clear()
                for call in fake.calls_to("sendMessage"):
                    for c, m in TOKEN.findall(str(call.params["text"])):
                        sent.setdefault((int(c), int(m)), call.time)
                return len(sent) >= want

            await fake.wait_until(done, timeout=args.timeout)
            ended = max(sent.values())
            cpu1 = (cpu_of(pids), postgres_cpu(postmaster), self_cpu())
            counters1 = await _pg_counters(pg_url) if pg_url else None
            statements = (await _statements(pg_url, reset=False)
                          if pg_url and args.statements else [])
            latencies = [(sent[k] - accepted[k]) * 1000 for k in accepted]
            replies = len(fake.calls_to("sendMessage"))
            commits = counters1[0] - counters0[0] if counters1 else None
            active = counters1[1] - counters0[1] if counters1 else None
            named = [t for call in fake.calls_to("sendMessage")
                     for t in TOKEN.findall(str(call.params["text"]))]
            twice = len(named) - len(set(named))
        finally:
            await cluster.stop_all()
    pct = percentiles(latencies, (50, 95))
    elapsed = ended - began
    pg_cpu = (cpu1[1] - cpu0[1]) if cpu0[1] is not None and cpu1[1] is not None else None
    return {
        "setup": label, "processes": processes, "messages": want,
        "seconds": round(elapsed, 2), "msgs_per_s": round(want / elapsed, 1),
        "p50_ms": round(pct["p50"], 1), "p95_ms": round(pct["p95"], 1),
        "replies": replies, "answered_twice": twice,
        "palaver_cpu_ms_per_msg": round((cpu1[0] - cpu0[0]) * 1000 / want, 2),
        "postgres_cpu_ms_per_msg": (round(pg_cpu * 1000 / want, 2)
                                    if pg_url and pg_cpu is not None else None),
        "driver_cpu_ms_per_msg": round((cpu1[2] - cpu0[2]) * 1000 / want, 2),
        "pg_commits_per_msg": round(commits / want, 1) if commits is not None else None,
        "pg_active_ms_per_msg": round(active / want, 2) if active is not None else None,
        "pg_top_statements": [
            {"query": " ".join(r["query"].split())[:90],
             "calls_per_msg": round(r["calls"] / want, 2),
             "ms_per_msg": round(r["total_exec_time"] / want, 3)}
            for r in statements[:6]],
        "pg_statements_ms_per_msg": (round(sum(r["total_exec_time"] for r in statements)
                                           / want, 2) if statements else None),
    }


def fresh_database(server: str) -> tuple[str, str]:
    name = "bench_" + uuid.uuid4().hex[:12]
    _pg_admin(server, f'CREATE DATABASE "{name}" TEMPLATE template0')
    return server.rpartition("/")[0] + "/" + name, name


def print_rows(rows: list[dict[str, Any]]) -> None:
    cols = [("setup", "setup", 18), ("msgs/s", "msgs_per_s", 8), ("p50 ms", "p50_ms", 8),
            ("p95 ms", "p95_ms", 8), ("replies", "replies", 8), ("twice", "answered_twice", 6),
            ("palaver cpu", "palaver_cpu_ms_per_msg", 12),
            ("pg cpu", "postgres_cpu_ms_per_msg", 8),
            ("driver cpu", "driver_cpu_ms_per_msg", 11),
            ("pg commits", "pg_commits_per_msg", 11),
            ("pg active", "pg_active_ms_per_msg", 10)]
    print("".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, _, w) in enumerate(cols)))
    for row in rows:
        cells = []
        for i, (_, key, w) in enumerate(cols):
            v = row[key]
            shown = "-" if v is None else str(v)
            cells.append(f"{shown:>{w}}" if i else f"{shown:<{w}}")
        print("".join(cells))
    print("(cpu: ms of CPU per message, summed over the processes of that kind; pg active:"
          " ms per message the server spent executing statements; replies: sendMessage"
          " calls, fewer than messages when messages of a chat share a turn)")


async def main(args) -> None:
    counts = [int(x) for x in args.processes.split(",") if x]
    server = os.environ.get(PG_URL_ENV)
    stop = None
    if server is None and counts:
        started = _start_private_pg()
        if started is None:
            sys.exit(f"no PostgreSQL: set {PG_URL_ENV} or apt-get install postgresql")
        server, stop = started
        args.statements = await preload_pg_stat_statements(server)
    else:
        args.statements = True  # if the given server preloads it; else quietly none
    rows: list[dict[str, Any]] = []
    try:
        if args.sqlite:
            rows.append(await run_setup("sqlite x1", 1, None, args))
            print(json.dumps(rows[-1]), flush=True)
        for n in counts:
            assert server is not None
            url, name = fresh_database(server)
            try:
                rows.append(await run_setup(f"postgresql x{n}", n, url, args))
                print(json.dumps(rows[-1]), flush=True)
            finally:
                _pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        if stop is not None:
            stop()
    print(f"\ncluster: {args.chats} chats x {args.messages} messages, model "
          f"{args.model_ms:g} ms, webhook mode, {machine()}")
    print_rows(rows)
    for row in rows:
        if row["pg_top_statements"]:
            print(f"\n{row['setup']}: statements by server time (pg_stat_statements),"
                  f" {row['pg_statements_ms_per_msg']} ms per message in all")
            for st in row["pg_top_statements"]:
                print(f"  {st['ms_per_msg']:>7.3f} ms {st['calls_per_msg']:>6.2f} calls  "
                      f"{st['query']}")
    print(json.dumps({"bench": "cluster", "chats": args.chats, "messages": args.messages,
                      "model_ms": args.model_ms, "machine": machine(), "rows": rows}))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chats", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--processes", default="1,2,4",
                    help="PostgreSQL setups: process counts, comma-separated")
    ap.add_argument("--model-ms", type=float, default=10.0)
    ap.add_argument("--lease", type=float, default=30.0, help="store.leaseSeconds")
    ap.add_argument("--timeout", type=float, default=900.0, help="hang guard per setup (s)")
    ap.add_argument("--paced", action="store_true", help="keep Telegram's flood pacing")
    ap.add_argument("--no-sqlite", dest="sqlite", action="store_false")
    ap.add_argument("--quick", action="store_true", help="20 chats x 10 messages")
    args = ap.parse_args(argv)
    if args.quick:
        args.chats, args.messages = 20, 10
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
