"""`palaver whatsapp login` / `logout` against a fake client emitting real neonize events."""

from __future__ import annotations

import asyncio
import io
import sys

import pytest
from neonize.aioze.events import ConnectedEv, PairStatusEv
from neonize.proto import Neonize_pb2 as N

import channels.whatsapp.login as login
from bridge.cli import main as palaver_main
from channels.whatsapp.client import session_db_path
from channels.whatsapp.login import normalise_phone, render_qr, run_login, run_logout
from tests.channels.test_whatsapp_fake import FakeWhatsAppClient, jid


def pair_status(ok: bool, error: str = "") -> PairStatusEv:
    event = PairStatusEv(
        ID=jid("4915123456789@s.whatsapp.net"), BusinessName="", Platform="android",
        Status=PairStatusEv.PStatus.Value("SUCCESS" if ok else "ERROR"), Error=error,
    )
    return PairStatusEv.FromString(event.SerializeToString())


def linking_fake(*codes: str, ok: bool = True) -> FakeWhatsAppClient:
    """A fresh device: shows ``codes`` one after another, then pairs and connects."""
    fake = FakeWhatsAppClient(linked=False, auto_connect=False)

    async def script() -> None:
        for code in codes:
            await asyncio.sleep(0)
            await fake.emit_qr(code)
        await fake.emit(pair_status(ok, "" if ok else "bad key"))
        if ok:
            fake.linked = True
            await fake.emit(ConnectedEv(status=True))

    fake.on_connect = script
    return fake


async def test_qr_login_draws_rotating_codes_then_succeeds(tmp_path):
    fake = linking_fake("2@first-code", "2@second-code")
    out = io.StringIO()
    code = await run_login(data_dir=tmp_path, client_factory=lambda p: fake, out=out)
    text = out.getvalue()
    assert code == 0
    assert render_qr("2@first-code") in text and render_qr("2@second-code") in text
    assert render_qr("2@first-code") != render_qr("2@second-code")
    assert "rotated" in text and "Linked devices" in text
    assert "WhatsApp is linked" in text
    assert fake.disconnects >= 1 and fake.session.done()  # Go told to stop
    assert session_db_path(tmp_path).parent.is_dir()


async def test_phone_login_prints_pairing_code(tmp_path):
    fake = linking_fake("2@ignored")
    fake.pairing_code = "QWER-TYUI"
    out = io.StringIO()
    code = await run_login(data_dir=tmp_path, phone="+49 151 2345-6789",
                           client_factory=lambda p: fake, out=out)
    text = out.getvalue()
    assert code == 0
    assert fake.paired_with == ["4915123456789"]
    assert "QWER-TYUI" in text and "phone number" in text
    assert render_qr("2@ignored") not in text


async def test_connection_failure_is_a_clear_error(tmp_path):
    fake = FakeWhatsAppClient(linked=False, connect_errors=1)
    out = io.StringIO()
    assert await run_login(data_dir=tmp_path, client_factory=lambda p: fake, out=out) == 1
    assert "could not connect to WhatsApp" in out.getvalue()
    assert "connection refused" in out.getvalue()


async def test_session_ending_with_error_is_a_clear_error(tmp_path):
    fake = FakeWhatsAppClient(linked=False, auto_connect=False)

    async def die() -> None:
        await asyncio.sleep(0)
        fake.drop(RuntimeError("websocket: bad handshake"))

    fake.on_connect = die
    out = io.StringIO()
    assert await run_login(data_dir=tmp_path, client_factory=lambda p: fake, out=out) == 1
    assert "bad handshake" in out.getvalue()


async def test_pairing_error_fails(tmp_path):
    fake = linking_fake("2@code", ok=False)
    out = io.StringIO()
    assert await run_login(data_dir=tmp_path, client_factory=lambda p: fake, out=out) == 1
    assert "pairing failed: bad key" in out.getvalue()


async def test_nobody_scans_times_out(tmp_path):
    fake = linking_fake()
    fake.on_connect = None
    out = io.StringIO()
    code = await run_login(data_dir=tmp_path, client_factory=lambda p: fake, out=out,
                           link_timeout=0.05)
    assert code == 1 and "no device was linked" in out.getvalue()
    assert fake.session.done()


async def test_invalid_phone_and_already_linked(tmp_path):
    out = io.StringIO()
    fake = FakeWhatsAppClient(linked=False)
    assert await run_login(data_dir=tmp_path, phone="12ab", client_factory=lambda p: fake,
                           out=out) == 1
    assert "international number" in out.getvalue() and fake.connects == 0

    linked = FakeWhatsAppClient(linked=True)
    out = io.StringIO()
    assert await run_login(data_dir=tmp_path, client_factory=lambda p: linked, out=out) == 0
    assert "already linked" in out.getvalue() and linked.connects == 0


def test_normalise_phone():
    assert normalise_phone("+1 (555) 000-1111") == "15550001111"
    assert normalise_phone("0049151") is None
    assert normalise_phone("+123") is None


async def test_logout_unlinks_and_removes_the_session(tmp_path):
    db = session_db_path(tmp_path)
    db.parent.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).write_bytes(b"sqlite")
    fake = FakeWhatsAppClient(linked=True)
    out = io.StringIO()
    assert await run_logout(data_dir=tmp_path, client_factory=lambda p: fake, out=out) == 0
    assert fake.logged_out is True
    assert not any(db.parent.glob("session.db*"))
    assert "Unlinked" in out.getvalue()


async def test_logout_when_whatsapp_is_unreachable_still_removes_local_session(tmp_path):
    db = session_db_path(tmp_path)
    db.parent.mkdir(parents=True)
    db.write_bytes(b"sqlite")
    fake = FakeWhatsAppClient(linked=True, connect_errors=1)
    out = io.StringIO()
    assert await run_logout(data_dir=tmp_path, client_factory=lambda p: fake, out=out) == 1
    assert not db.exists() and fake.logged_out is False
    assert "Linked devices" in out.getvalue()


async def test_logout_without_session(tmp_path):
    out = io.StringIO()
    assert await run_logout(data_dir=tmp_path, client_factory=None, out=out) == 0
    assert "nothing to unlink" in out.getvalue()


def test_cli_dispatches_login_with_config_data_dir(tmp_path, monkeypatch, capsys):
    (tmp_path / "palaver.json5").write_text(f'{{ dataDir: "{tmp_path / "pd"}" }}')
    seen = []

    def factory(path):
        seen.append(path)
        fake = linking_fake("2@cli")
        fake.pairing_code = "ZZZZ-1111"
        return fake

    monkeypatch.setattr(login, "NeonizeClient", factory)
    code = palaver_main(["whatsapp", "login", "--phone", "+4915123456789",
                         "--config", str(tmp_path / "palaver.json5")])
    assert code == 0
    assert seen == [session_db_path(tmp_path / "pd")]
    assert "ZZZZ-1111" in capsys.readouterr().out


def test_cli_config_error_is_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.json5"
    bad.write_text("{ dataDir: ")
    assert palaver_main(["whatsapp", "logout", "--config", str(bad)]) == 1
    assert "bad.json5" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="neonize ships a linux .so here")
def test_render_qr_is_terminal_text():
    art = render_qr("2@abc")
    assert art.count("\n") > 10 and "█" in art
    _ = N  # neonize protos imported: the test module builds real events
