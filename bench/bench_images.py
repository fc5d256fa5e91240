"""Image preparation and prompt-building costs (a script, not a pytest test).

    /work/venv/bin/python bench/bench_images.py [--runs 5] [--turns 50]

1. Preparing a 12-megapixel (4000x3000) camera-like JPEG: pillow alone, then through the
   media store uncached, cached in memory, and cached on disk (a restart).
2. Building the prompt for a session of N turns, each with a photo (1280x960, Telegram's
   photo size), plus the current message: uncached (empty prepared cache: every photo is
   decoded), cached in memory (the next turn), cached on disk (after a restart).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from bridge import images  # noqa: E402
from bridge.config.schema import AgentDefaults, Config  # noqa: E402
from bridge.envelope import ChatAddress, ChatKind, MediaKind  # noqa: E402
from bridge.media import MediaStore, images_included, user_parts  # noqa: E402
from bridge.models.base import ImagePart, ModelRequest, Turn  # noqa: E402


def camera_like_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    """Smooth colour fields plus sensor-like grain: compresses like a photo, not trivially."""
    base = Image.frombytes("RGB", (width // 10, height // 10),
                           os.urandom((width // 10) * (height // 10) * 3))
    base = base.resize((width, height), Image.Resampling.BICUBIC)
    grain = Image.effect_noise((width, height), 24).convert("RGB")
    out = io.BytesIO()
    Image.blend(base, grain, 0.25).save(out, "JPEG", quality=quality)
    return out.getvalue()


def timed(fn, runs: int) -> float:
    """Median milliseconds of ``runs`` calls of ``fn``."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def atimed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def prepare_12mp(tmp: Path, runs: int) -> dict:
    source = camera_like_jpeg(4000, 3000)
    limits = images.ImageLimits()
    result = images.prepare_image(source, limits)
    pillow_ms = timed(lambda: images.prepare_image(source, limits), runs)

    async def uncached():
        store = MediaStore(tmp / f"cold-{time.perf_counter_ns()}")
        ref = await store.put(source, kind=MediaKind.IMAGE, mime="image/jpeg")
        start = time.perf_counter()
        await store.prepared_media(ref.media_id, limits)
        return (time.perf_counter() - start) * 1000

    cold = statistics.median([await uncached() for _ in range(runs)])
    store = MediaStore(tmp / "warm")
    ref = await store.put(source, kind=MediaKind.IMAGE, mime="image/jpeg")
    await store.prepared_media(ref.media_id, limits)
    memory_ms = await atimed(lambda: store.prepared_media(ref.media_id, limits), runs)

    async def from_disk():
        await MediaStore(store.root).prepared_media(ref.media_id, limits)

    disk_ms = await atimed(from_disk, runs)
    return {
        "source_bytes": len(source), "prepared_bytes": len(result.data),
        "prepared_size": f"{result.width}x{result.height}",
        "pillow_ms": pillow_ms, "store_uncached_ms": cold, "store_memory_ms": memory_ms,
        "store_disk_ms": disk_ms,
    }


async def session_prompt(tmp: Path, turns: int, runs: int) -> dict:
    settings = AgentDefaults()
    photos = [camera_like_jpeg(1280, 960, quality=87) for _ in range(turns + 1)]
    root = tmp / "session"
    store = MediaStore(root)
    refs = [await store.put(p, kind=MediaKind.IMAGE, mime="image/jpeg") for p in photos]

    try:
        from bridge.prompt import build_request
        from bridge.store.records import HistoryTurn, MessageKind, MessageStatus, StoredMessage
    except ImportError:  # the core's prompt builder is not there: call user_parts directly
        build_request = None

    model = Config.model_validate({"models": {"mode": "replace", "providers": {"p": {
        "baseUrl": "http://127.0.0.1:9/v1", "api": "openai-responses",
        "models": [{"id": "eye", "input": ["text", "image"], "contextWindow": 1_000_000}],
    }}}}).model("p/eye")

    def msg(i: int):
        return StoredMessage(
            id=i, direction="in", role="user", kind=MessageKind.CHAT,
            session_key="bench:a:direct:1", session_id=1, turn_id=i,
            address=ChatAddress("console", "default", "1", ChatKind.DIRECT),
            platform_message_id=str(i), sender_id="1", sender_name=None, mentioned=False,
            text=f"what about this one, number {i}?", media=(refs[i],), quoted=None,
            status=MessageStatus.ANSWERED, reason=None, model_ref=None,
            reply_to_message_id=None, delivered=True, created_at=float(i))

    async def build(current_store: MediaStore) -> ModelRequest:
        if build_request is not None:
            history = [HistoryTurn(i, (msg(i),), f"answer {i}") for i in range(turns)]
            built = await build_request(
                model=model, instructions="sys", summary=None, history=history,
                current=[msg(turns)], group=False, media_store=current_store,
                settings=settings)
            return built.request
        out = []
        for i in range(turns + 1):
            parts = await user_parts(
                f"what about this one, number {i}?", (refs[i],), store=current_store,
                vision=True, include_images=images_included(turns - i, settings),
                settings=settings)
            out.append(Turn("user", parts))
        return ModelRequest("sys", tuple(out))

    cold_samples = []
    for _ in range(runs):
        prepared_dir = root / "prepared"
        if prepared_dir.exists():
            for path in sorted(prepared_dir.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
        fresh = MediaStore(root)
        start = time.perf_counter()
        request = await build(fresh)
        cold_samples.append((time.perf_counter() - start) * 1000)
    memory_ms = await atimed(lambda: build(fresh), runs)

    async def after_restart():
        await build(MediaStore(root))

    disk_ms = await atimed(after_restart, runs)
    image_parts = [p for t in request.turns for p in t.parts if isinstance(p, ImagePart)]
    return {
        "turns": turns, "via": "prompt.build_request" if build_request else "user_parts",
        "images_sent": len(image_parts),
        "image_bytes_sent": sum(len(p.data) for p in image_parts),
        "uncached_ms": statistics.median(cold_samples), "memory_cached_ms": memory_ms,
        "disk_cached_ms": disk_ms,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--turns", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = await prepare_12mp(Path(tmp), args.runs)
        session = await session_prompt(Path(tmp), args.turns, args.runs)

    print(f"12-megapixel JPEG ({one['source_bytes'] / 1e6:.1f} MB) -> {one['prepared_size']}, "
          f"{one['prepared_bytes'] / 1e3:.0f} kB")
    rows = [
        ("prepare 12 MP, pillow only", one["pillow_ms"]),
        ("prepare 12 MP, store uncached", one["store_uncached_ms"]),
        ("prepare 12 MP, store memory cache", one["store_memory_ms"]),
        ("prepare 12 MP, store disk cache", one["store_disk_ms"]),
        (f"{session['turns']}-turn prompt, uncached", session["uncached_ms"]),
        (f"{session['turns']}-turn prompt, memory cache", session["memory_cached_ms"]),
        (f"{session['turns']}-turn prompt, disk cache", session["disk_cached_ms"]),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'case':<{width}}  {'median ms':>10}")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:>10.2f}")
    print(f"prompt built via {session['via']}: {session['images_sent']} images sent "
          f"({session['image_bytes_sent'] / 1e3:.0f} kB), the rest as placeholders")
    print(json.dumps({"bench": "images", "runs": args.runs, "prepare_12mp": one,
                      "session": session}, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(main())
