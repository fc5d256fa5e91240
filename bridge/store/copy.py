"""``palaver store migrate --to postgresql://...``: copy a SQLite store into PostgreSQL.

The target must be empty: no tables but Palaver's, and none of those holding a row (a
copy that failed and rolled back leaves only the empty schema, so it can be run again).
Its schema is migrated to the source's version, then every table is copied in foreign
key order in **one** transaction, ids kept; the identity sequences are moved past the
copied ids (``setval``), and each table is verified (row count, and a digest of every
row read back from both sides) before the commit.  Any mismatch rolls the whole copy
back and the command exits 1.

Tables whose rows only mean something to running processes (the coordination tables of
several processes on one PostgreSQL store) are not copied; every other table needs a
copy rule, which :func:`copy_plan` derives from the SQLite schema and checks against
PostgreSQL's.

Media: on SQLite the files live in ``<dataDir>/media`` (its ``media_blobs`` table stays
empty), and on PostgreSQL every process must find them in ``media_blobs``.  With
``media_dir`` the copy fills that table from the files, in the same transaction: each
file read back is checked against its content-hash name (a damaged one is left out and
said so), and the rows are verified by count, total size and PostgreSQL's own sha256 of
every row.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.store.db import Database, StoreError
from bridge.store.sql import Body, all_

log = logging.getLogger(__name__)

BATCH = 10_000
# PostgreSQL tables that are not copied: the migration bookkeeping (written by the
# target's own migrations) and the state of live processes (migration 0008 on).
NOT_COPIED = frozenset({"schema_version", "processes", "session_owners", "leaders"})
# Filled from the media directory, not from SQLite's (empty) table of the same name.
MEDIA_TABLE = "media_blobs"
# A batch of media files written at once: bounded in bytes as well as in files.
MEDIA_BATCH_BYTES = 16 * 1024 * 1024
MEDIA_BATCH_FILES = 500
_MEDIA_FILE = re.compile(r"^([0-9a-f]{64})(\.[a-z0-9]{1,8})?$")


class CopyError(StoreError):
    """The copy was refused (a non-empty target, a schema mismatch) or did not verify."""


@dataclass(frozen=True, slots=True)
class TablePlan:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the primary key (the order rows are read and compared in)
    identity: bool  # an ``id`` column whose sequence must move past the copied ids


@dataclass(frozen=True, slots=True)
class TableResult:
    name: str
    source: int
    target: int
    ok: bool


def _sqlite_schema() -> Body[list[TablePlan]]:
    """Every table of the SQLite store (minus :data:`NOT_COPIED`), parents first."""
    names = [r[0] for r in (yield all_(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"))]
    plans: dict[str, TablePlan] = {}
    parents: dict[str, set[str]] = {}
    for name in names:
        if name in NOT_COPIED:
            continue
        info = yield all_(f"PRAGMA table_info({name})")
        columns = tuple(r["name"] for r in info)
        key = tuple(r["name"] for r in sorted(info, key=lambda r: r["pk"]) if r["pk"])
        plans[name] = TablePlan(name, columns, key or columns, key == ("id",))
        parents[name] = {r["table"] for r in (yield all_(f"PRAGMA foreign_key_list({name})"))
                         if r["table"] != name}
    ordered: list[TablePlan] = []
    done: set[str] = set()
    while len(ordered) < len(plans):
        ready = sorted(n for n in plans if n not in done and parents[n] <= done)
        if not ready:
            raise CopyError(f"foreign keys form a cycle among {sorted(set(plans) - done)}")
        for name in ready:
            ordered.append(plans[name])
            done.add(name)
    return ordered


async def copy_plan(source: Database, conn: Any) -> list[TablePlan]:
    """The tables to copy, parents first, checked against the target's (migrated)
    schema: the same tables (minus :data:`NOT_COPIED`) with the same columns."""
    plans = await source.read_with(_sqlite_schema())
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema()")
    target: dict[str, set[str]] = {}
    for r in rows:
        if r["table_name"] not in NOT_COPIED:
            target.setdefault(r["table_name"], set()).add(r["column_name"])
    mine = {p.name: set(p.columns) for p in plans}
    if mine != target:
        missing = sorted(set(target) - set(mine))
        extra = sorted(set(mine) - set(target))
        differ = sorted(n for n in set(mine) & set(target) if mine[n] != target[n])
        raise CopyError("the SQLite and PostgreSQL schemas differ (tables only in"
                        f" PostgreSQL: {missing}, only in SQLite: {extra}, other columns:"
                        f" {differ}): is the source at this Palaver's schema version?")
    return plans


def _normal(value: Any) -> str:
    """One value in a form both backends give alike (SQLite may hand back an int from
    a REAL column, PostgreSQL a float)."""
    if value is None:
        return "\x00"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return repr(float(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


_MOD = 1 << 256


def _digest(rows: Iterable[Sequence[Any]], acc: int) -> tuple[int, int]:
    """(rows seen, ``acc`` plus the rows' hashes): a multiset digest, the same in any
    order (the two backends may collate text keys differently)."""
    n = 0
    for row in rows:
        line = "\x1f".join(_normal(v) for v in row).encode("utf-8", "surrogatepass")
        acc = (acc + int.from_bytes(hashlib.sha256(line).digest(), "big")) % _MOD
        n += 1
    return n, acc


def _source_rows(plan: TablePlan, offset: int) -> Body[list[Any]]:
    order = ", ".join(plan.key)
    return (yield all_(f"SELECT {', '.join(plan.columns)} FROM {plan.name} ORDER BY {order}"
                       " LIMIT ? OFFSET ?", BATCH, offset))


async def write_rows(conn: Any, plan: TablePlan, rows: list[tuple[Any, ...]]) -> None:
    """One batch into the target table (binary COPY)."""
    await conn.copy_records_to_table(plan.name, records=rows, columns=list(plan.columns))


async def _refuse_non_empty(conn: Any, where: str) -> None:
    tables = [r[0] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    if not tables:
        return
    if "schema_version" not in tables:
        raise CopyError(f"the target {where} is not empty (tables {sorted(tables)[:5]}):"
                        " give an empty database")
    for table in tables:
        if table == "schema_version":
            continue
        if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'):
            raise CopyError(f"the target {where} already holds data (table {table}):"
                            " give an empty database")


async def copy_to_postgres(source: Database, url: str, *,
                           progress: Callable[[str], None] | None = None,
                           media_dir: Path | None = None) -> list[TableResult]:
    """Copy every row of the SQLite store ``source`` into the empty PostgreSQL database
    at ``url`` (migrated here), verified, in one transaction; with ``media_dir`` (the
    data dir's ``media``) its files into ``media_blobs`` too.  Raises
    :class:`CopyError` (nothing committed) when refused or when a table does not
    verify."""
    import asyncpg

    from bridge.store.pg import migrate, redact

    if source.dialect != "sqlite":
        raise CopyError("the source of a copy is a SQLite store")
    where = redact(url)
    version = await source.schema_version()
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CopyError(f"cannot connect to {where}: {exc}") from exc
    try:
        await _refuse_non_empty(conn, where)
        from bridge.store.db import load_migrations

        await migrate(conn, where, [m for m in load_migrations("postgresql")
                                    if m.version <= version])
        plans = await copy_plan(source, conn)
        results: list[TableResult] = []
        try:
            await _copy_all(source, conn, plans, results, where, progress, media_dir)
        except asyncpg.PostgresError as exc:
            raise CopyError(f"the copy failed ({type(exc).__name__}: {exc}): nothing was"
                            f" committed to {where}") from exc
        return results
    finally:
        await conn.close()


async def _copy_all(source: Database, conn: Any, plans: list[TablePlan],
                    results: list[TableResult], where: str,
                    progress: Callable[[str], None] | None,
                    media_dir: Path | None = None) -> None:
    """Every table, verified, in one transaction (rolled back on any mismatch)."""
    async with conn.transaction():
        for plan in plans:
            if plan.name == MEDIA_TABLE:
                if media_dir is not None:
                    results.append(await _copy_media(conn, media_dir, progress))
                continue
            offset = 0
            while True:
                batch = await source.read_with(_source_rows(plan, offset))
                if not batch:
                    break
                await write_rows(conn, plan, [tuple(r) for r in batch])
                offset += len(batch)
            if plan.identity:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{plan.name}', 'id'),"
                    f" COALESCE(MAX(id), 0) + 1, false) FROM {plan.name}")
            results.append(await _verify(source, conn, plan))
            if progress is not None:
                r = results[-1]
                progress(f"{plan.name}: {r.source} -> {r.target}"
                         f"{'' if r.ok else '  MISMATCH'}")
        bad = [r.name for r in results if not r.ok]
        if bad:
            raise CopyError(f"the copy did not verify (tables {bad}): nothing was"
                            f" committed to {where}")


def media_files(media_dir: Path) -> Iterator[tuple[str, Path]]:
    """``(content id, path)`` of every stored file under ``media_dir`` (``ab/<sha256>.ext``;
    not prepared images, not unfinished ``.part-`` files), one per id."""
    seen: set[str] = set()
    if not media_dir.is_dir():
        return
    for folder in sorted(media_dir.iterdir()):
        if len(folder.name) != 2 or not folder.is_dir():
            continue  # prepared/, stray files
        # A file with a known extension before a ``.bin`` of the same bytes (its mime).
        for path in sorted(folder.iterdir(), key=lambda p: (p.suffix == ".bin", p.name)):
            match = _MEDIA_FILE.match(path.name)
            if match is None or not match.group(1).startswith(folder.name):
                continue
            if match.group(1) in seen or not path.is_file():
                continue
            seen.add(match.group(1))
            yield match.group(1), path


def _read_media(path: Path, media_id: str) -> tuple[bytes | None, float]:
    """The file's bytes (None when they do not hash to its name: damaged) and mtime."""
    data = path.read_bytes()
    mtime = path.stat().st_mtime
    return (data if hashlib.sha256(data).hexdigest() == media_id else None), mtime


async def _copy_media(conn: Any, media_dir: Path,
                      progress: Callable[[str], None] | None) -> TableResult:
    """The media files into ``media_blobs`` (batches bounded in bytes), verified."""
    from bridge.media import stored_mime

    files = await asyncio.to_thread(lambda: list(media_files(media_dir)))
    columns = ["id", "mime", "size", "data", "created_at"]
    batch: list[tuple[Any, ...]] = []
    batch_bytes = copied = total = damaged = 0
    for media_id, path in files:
        try:
            data, created = await asyncio.to_thread(_read_media, path, media_id)
        except OSError as exc:
            raise CopyError(f"cannot read the media file {path}: {exc}") from exc
        if data is None:
            damaged += 1
            log.warning("media file %s does not match its name: not copied", path.name)
            continue
        batch.append((media_id, stored_mime(path), len(data), data, created))
        batch_bytes += len(data)
        copied += 1
        total += len(data)
        if batch_bytes >= MEDIA_BATCH_BYTES or len(batch) >= MEDIA_BATCH_FILES:
            await conn.copy_records_to_table(MEDIA_TABLE, records=batch, columns=columns)
            batch, batch_bytes = [], 0
    if batch:
        await conn.copy_records_to_table(MEDIA_TABLE, records=batch, columns=columns)
    row = await conn.fetchrow(
        f"SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes,"
        f" COUNT(*) FILTER (WHERE size <> length(data)"
        f" OR encode(sha256(data), 'hex') <> id) AS bad FROM {MEDIA_TABLE}")
    ok = row["n"] == copied and row["bytes"] == total and row["bad"] == 0
    if progress is not None:
        progress(f"{MEDIA_TABLE}: {copied} files ({total} bytes) -> {row['n']} rows"
                 f"{f', {damaged} damaged files left out' if damaged else ''}"
                 f"{'' if ok else '  MISMATCH'}")
    return TableResult(MEDIA_TABLE, copied, int(row["n"]), ok)


async def _verify(source: Database, conn: Any, plan: TablePlan) -> TableResult:
    """Both sides read back: the row counts and the rows' digests must agree."""
    count, mine, offset = 0, 0, 0
    while True:
        batch = await source.read_with(_source_rows(plan, offset))
        if not batch:
            break
        n, mine = _digest(batch, mine)
        count += n
        offset += len(batch)
    target, theirs = 0, 0
    async for row in conn.cursor(f"SELECT {', '.join(plan.columns)} FROM {plan.name}",
                                 prefetch=BATCH):
        n, theirs = _digest([row], theirs)
        target += n
    return TableResult(plan.name, count, target, count == target and mine == theirs)


def results_table(results: Sequence[TableResult]) -> str:
    """``table  source  target  ok`` lines for the command's output."""
    width = max([len(r.name) for r in results] + [5])
    lines = [f"{'table':<{width}}  {'source':>8}  {'target':>8}  ok"]
    lines += [f"{r.name:<{width}}  {r.source:>8}  {r.target:>8}  {'yes' if r.ok else 'NO'}"
              for r in results]
    return "\n".join(lines)


def migrate_command(config: Any, to_url: str, *, out: Callable[[str], None] = print) -> int:
    """``palaver store migrate --to URL``: copy this data dir's SQLite store into the
    empty PostgreSQL database at ``to_url``.  Refused while ``palaver run`` uses the
    data dir (its run lock).  Exit status: 0 copied and verified, 1 otherwise."""
    import asyncio

    from bridge.lock import DataDirBusy, run_lock
    from bridge.store import DB_FILENAME, Store
    from bridge.store.pg import is_postgres_url, redact

    if not is_postgres_url(to_url):
        out("store migrate: --to must be a postgresql://user:password@host:port/dbname URL")
        return 1
    path = config.data_dir / DB_FILENAME
    if not path.exists():
        out(f"store migrate: no SQLite store at {path}")
        return 1
    lock = run_lock(config.data_dir)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        out(f"store migrate: {exc}")
        return 1

    async def go() -> list[TableResult]:
        source = await Store.open(path)
        try:
            return await copy_to_postgres(source, to_url, progress=None,
                                          media_dir=config.data_dir / "media")
        finally:
            await source.close()

    try:
        results = asyncio.run(go())
    except CopyError as exc:
        out(f"store migrate: {exc}")
        return 1
    finally:
        lock.release()
    out(results_table(results))
    out(f"copied {sum(r.target for r in results)} rows into {redact(to_url)}; set"
        " store.url (or $PALAVER_DATABASE_URL) to it and restart Palaver")
    return 0


def cmd_store_migrate(args: Any) -> int:
    """``palaver store migrate --to URL`` (the CLI's handler)."""
    from bridge.config.load import load_for_cli

    config, _path = load_for_cli(args)
    return migrate_command(config, args.to)
