"""A Palaver process as far as coordination goes, for tests that kill or stop one.

``python -m tests.cluster.coord_process URL --lease S [--chat KEY ...] [--lead NAME ...]``
registers on the store at URL, takes the chats, leads the names, and prints one JSON line
per event on stdout (``ready``, ``gain``, ``lose``, ``lost``, ``registered``) until it is
killed.  ``--hold-claim KEY`` also claims a received message of that chat (stamping its
turn with this process) before saying ready, so a test can kill a process mid-turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def main(argv: list[str]) -> None:
    from bridge.store import Store
    from bridge.store.coord import PgCoordinator, application_name

    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--lease", type=float, default=30.0)
    p.add_argument("--chat", action="append", default=[])
    p.add_argument("--lead", action="append", default=[])
    p.add_argument("--hold-claim")
    args = p.parse_args(argv)

    app = application_name()
    store = await Store.open_url(args.url, application_name=app)
    coord = PgCoordinator(store, lease_seconds=args.lease, app_name=app)
    await coord.start()
    coord.on_lost(lambda: say(event="lost"))
    for key in args.chat:
        if not await coord.acquire(key):
            say(event="not_owner", chat=key)
    for name in args.lead:
        async def gain(epoch: int, name: str = name) -> None:
            say(event="gain", name=name, epoch=epoch, process=coord.process_id)

        async def lose(name: str = name) -> None:
            say(event="lose", name=name)

        await coord.lead(name, gain, lose)
    claimed = None
    if args.hold_claim:
        claim = await store.claim_next(args.hold_claim)
        claimed = None if claim is None else claim.turn_id
    say(event="ready", process=coord.process_id, lock_key=coord._lock_key, turn=claimed,
        leads=sorted(coord.leaderships))
    last = coord.process_id
    while True:
        await asyncio.sleep(0.1)
        if coord.process_id != last and coord.process_id is not None:
            last = coord.process_id
            say(event="registered", process=last)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
