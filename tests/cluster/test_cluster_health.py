"""``/healthz``'s cluster block: shown always, and in cluster mode a process not sure of its
lease is not ready (a load balancer then sends its webhooks to the others)."""

from __future__ import annotations

from bridge.health import evaluate_health

OK = {"store": {"ok": True, "detail": ""}, "channels": {}}


def test_a_cluster_process_not_alive_is_not_ready():
    report = {**OK, "cluster": {"mode": "cluster", "process": None, "alive": False}}
    assert evaluate_health(report) == ["cluster: this process is not registered as alive"]


def test_an_alive_cluster_process_and_a_single_one_are_ready():
    assert evaluate_health({**OK, "cluster": {"mode": "cluster", "alive": True}}) == []
    assert evaluate_health({**OK, "cluster": {"mode": "single", "alive": True}}) == []
    assert evaluate_health(OK) == []  # an older report without the block


async def test_the_app_on_sqlite_reports_a_single_process(tmp_path, run_app):
    from tests.core.helpers import make_config

    app = await run_app(make_config(tmp_path))
    report = await app.health()
    assert report["cluster"]["mode"] == "single" and report["cluster"]["alive"] is True
    assert (tmp_path / "data").is_dir()


def test_the_data_dir_lock_is_for_sqlite_only(tmp_path):
    """On PostgreSQL the processes row says who runs (several may share a store), so
    ``palaver run`` takes no palaver.lock; on SQLite it does, as before."""
    from bridge.run import _uses_sqlite
    from tests.core.helpers import make_config

    assert _uses_sqlite(make_config(tmp_path)) is True
    on_pg = make_config(tmp_path, store={"url": "postgresql://u:p@127.0.0.1:5/db"})
    assert _uses_sqlite(on_pg) is False
