"""``palaver config import-openclaw``: a realistic openclaw.json becomes a Palaver config
that loads; every key left out is listed with why; secrets are copied, never printed."""

from __future__ import annotations

import stat
from pathlib import Path

import json5

from bridge.cli import main
from bridge.config.load import load_config
from bridge.config.openclaw import import_openclaw

OPENCLAW = Path(__file__).parent / "data" / "openclaw.json"
TOKEN = "123456789:AAH-openclaw-import-token-abcdefghij"
GOOGLE_KEY = "AIza-google-secret-value-1234567"


def test_a_realistic_openclaw_json_imports(tmp_path, capsys, monkeypatch):
    out = tmp_path / "palaver.json5"
    assert main(["config", "import-openclaw", str(OPENCLAW), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    config = load_config(out)
    # models and agents.defaults
    assert config.default_selection().primary == "lmstudio/qwen3-30b-a3b"
    assert config.default_selection().fallbacks == ("anthropic/claude-sonnet-4-5",)
    assert config.aliases() == {"Qwen": "lmstudio/qwen3-30b-a3b",
                                "Sonnet": "anthropic/claude-sonnet-4-5"}
    assert config.agents.defaults.models["anthropic/claude-sonnet-4-5"].params == {
        "temperature": 0.3}
    assert config.model("Qwen").api == "openai-responses"
    assert config.model("Qwen").context_window == 32768
    # Telegram: the env secret reference, numeric ids as strings, groupAllowFrom kept as
    # each group's allowFrom (no group more open than before), topics
    tg = config.channels.telegram
    assert tg is not None and tg.botToken is not None
    assert tg.botToken.get_secret_value() == TOKEN
    assert '"${TELEGRAM_BOT_TOKEN}"' in out.read_text()
    assert tg.allowFrom == ("123456789", "987654321") and tg.dmPolicy == "pairing"
    group = tg.groups["-1001234567890"]
    assert group.allowFrom == ("123456789",) and group.requireMention is False
    assert group.systemPrompt == "Be brief." and group.topics["99"].requireMention is True
    assert tg.textChunkLimit == 3500 and tg.groupPolicy == "allowlist"
    # WhatsApp
    wa = config.channels.whatsapp
    assert wa is not None and wa.dmPolicy == "allowlist" and wa.allowFrom == ("+15551234567",)
    assert wa.sendReadReceipts is False and wa.groups["*"].requireMention is True
    # modelByChannel for Palaver's channels, precedence as in OpenClaw
    assert config.channels.modelByChannel["telegram"]["-1001234567890:topic:99"].primary \
        == "lmstudio/qwen3-30b-a3b"
    assert config.candidates(config.selection_for(
        "telegram", chat_kind="group", chat_id="-1001234567890")) == [
        "anthropic/claude-sonnet-4-5"]
    # every key left out is listed with a reason, in the output and the file's header
    for path in ("gateway", "session", "messages", "env", "agents.list",
                 "agents.defaults.workspace", "agents.defaults.heartbeat", "channels.discord",
                 "channels.defaults", "channels.modelByChannel.discord",
                 "models.providers.google", "channels.telegram.streaming",
                 "channels.telegram.customCommands", "channels.whatsapp.ackReaction",
                 "channels.whatsapp.textChunkLimit",
                 "channels.telegram.groups.-1001234567890.skills",
                 "agents.defaults.model.fallbacks[1]",
                 "channels.modelByChannel.whatsapp.+15557654321"):
        assert f"  {path}: " in printed, path
        assert f"//   {path}: " in out.read_text(), path
    assert "greater than or equal to 200" in printed
    assert "set TELEGRAM_BOT_TOKEN in the environment" in printed
    # secrets: copied where Palaver uses them, never printed; the file is owner-only
    assert GOOGLE_KEY not in printed and "discord-secret-token" not in printed
    assert "discord-secret-token" not in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # and it never overwrites
    assert main(["config", "import-openclaw", str(OPENCLAW), "--output", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_accounts_become_the_channel_and_list_indices_drop_one_by_one():
    result = import_openclaw(json5.loads("""{
      agents: { defaults: { model: { primary: "x/a", fallbacks: ["y/b", "z/c", "x/a2"] } } },
      models: { mode: "replace", providers: { x: { baseUrl: "http://127.0.0.1:1/v1",
                                                   models: [{ id: "a" }, { id: "a2" }] } } },
      channels: { telegram: { defaultAccount: "work", accounts: {
          work: { botToken: "${WORK_TOKEN}", dmPolicy: "allowlist", allowFrom: [42] },
          home: { botToken: "${HOME_TOKEN}" } } } },
    }"""), env={})
    assert result.data["agents"]["defaults"]["model"]["fallbacks"] == ["x/a2"]
    tg = result.data["channels"]["telegram"]
    assert tg == {"botToken": "${WORK_TOKEN}", "dmPolicy": "allowlist", "allowFrom": ["42"]}
    assert ("channels.telegram.accounts.home",
            "Palaver runs one account per channel (run another Palaver with its own config "
            "for this one)") in result.dropped
    assert any("account 'work'" in n for n in result.notes)
