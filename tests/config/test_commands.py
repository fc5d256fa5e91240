"""``palaver init / config validate / config show / models list`` through bridge.cli.main."""

from __future__ import annotations

import json

import pytest

from bridge.cli import main
from bridge.config.commands import STARTER_CONFIG
from bridge.config.load import load_config

GOOD = """{
  models: { providers: { local: { baseUrl: "http://127.0.0.1:1234/v1", apiKey: "${LOCAL_KEY}",
    headers: { Authorization: "Bearer hdr-secret-9" },
    models: [{ id: "qwen", input: ["text", "image"], contextWindow: 32768 }] } } },
  agents: { defaults: {
    model: { primary: "Qwen", fallbacks: ["anthropic/claude-haiku-4-5", "openai/gpt-9-future"] },
    models: { "local/qwen": { alias: "Qwen" } } } },
  channels: { telegram: { botToken: "${TELEGRAM_BOT_TOKEN}" } },
}"""
SECRETS = {"LOCAL_KEY": "sk-local-secret-1", "TELEGRAM_BOT_TOKEN": "123456789:AAH-tg-secret-2-abcdefghijklmnopqrstuv",
           "ANTHROPIC_API_KEY": "sk-ant-secret-3"}


@pytest.fixture
def good(tmp_path, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "good.json5"
    path.write_text(GOOD)
    return path


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["init"]) == 0
    path = tmp_path / "palaver.json5"  # conftest chdirs into tmp_path
    assert path.read_text() == STARTER_CONFIG
    config = load_config(path, env={})
    assert config.default_selection().primary == "local/local-model"
    path.write_text("{ mine: true }")
    capsys.readouterr()
    assert main(["init"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and path.read_text() == "{ mine: true }"
    assert_no_traceback(err)


def test_init_to_a_named_path(tmp_path, capsys):
    target = tmp_path / "sub" / "dir" / "p.json5"
    assert main(["init", str(target)]) == 0
    assert target.exists() and str(target) in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["-c", "{p}", "init"], ["init", "-c", "{p}"],
                                  ["init", "--config", "{p}"]])
def test_init_honours_config_flag(tmp_path, capsys, argv):
    target = tmp_path / "my.json5"
    assert main([a.format(p=target) for a in argv]) == 0
    assert target.read_text() == STARTER_CONFIG
    assert not (tmp_path / "palaver.json5").exists()


def test_init_honours_palaver_config_and_the_argument_wins(tmp_path, monkeypatch, capsys):
    env_target = tmp_path / "env.json5"
    monkeypatch.setenv("PALAVER_CONFIG", str(env_target))
    assert main(["init"]) == 0
    assert env_target.read_text() == STARTER_CONFIG
    flag_target, arg_target = tmp_path / "flag.json5", tmp_path / "arg.json5"
    assert main(["init", "-c", str(flag_target)]) == 0 and flag_target.exists()
    assert main(["init", str(arg_target), "-c", str(tmp_path / "unused.json5")]) == 0
    assert arg_target.exists() and not (tmp_path / "unused.json5").exists()
    assert not (tmp_path / "palaver.json5").exists()


def test_validate_ok(good, capsys):
    assert main(["config", "validate", "--config", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"ok: {good}"
    # --config before the subcommand works too
    assert main(["--config", str(good), "config", "validate"]) == 0
    assert capsys.readouterr().out.strip() == f"ok: {good}"


def test_validate_finds_palaver_config_env(good, monkeypatch, capsys):
    monkeypatch.setenv("PALAVER_CONFIG", str(good))
    assert main(["config", "validate"]) == 0
    assert str(good) in capsys.readouterr().out


@pytest.mark.parametrize(("body", "expected"), [
    ("{ agents: { defaults: { model: 'x' ] } }", "bad.json5:1:"),
    ("{ agents: { defalts: {} } }", "agents.defalts: unknown key 'defalts' (did you mean 'defaults'?)"),
    ("{ agents: { defaults: { model: 'nope/m' } } }", "agents.defaults.model: unknown provider 'nope'"),
    ("{ channels: { telegram: { botToken: '${NOT_SET_ANYWHERE}' } } }",
     "channels.telegram.botToken: environment variable NOT_SET_ANYWHERE is not set"),
    ("{ health: { port: 'eighty' } }", "health.port: expected a valid integer"),
])
def test_validate_errors_exit_1_without_traceback(tmp_path, capsys, body, expected):
    path = tmp_path / "bad.json5"
    path.write_text(body)
    assert main(["config", "validate", "-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert expected in err and str(path) in err
    assert_no_traceback(err)


@pytest.mark.parametrize("argv", [["config", "validate"], ["config", "show"], ["models", "list"]])
def test_missing_explicit_file_is_a_clean_error(tmp_path, capsys, argv):
    assert main([*argv, "--config", str(tmp_path / "missing.json5")]) == 1
    err = capsys.readouterr().err
    assert "config file not found" in err
    assert_no_traceback(err)


def test_show_redacts_every_secret(good, capsys):
    assert main(["config", "show", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    for secret in [*SECRETS.values(), "hdr-secret-9"]:
        assert secret not in out
    assert shown["models"]["providers"]["local"]["apiKey"] == "[REDACTED]"
    assert shown["models"]["providers"]["anthropic"]["apiKey"] == "[REDACTED]"
    assert shown["channels"]["telegram"]["botToken"] == "[REDACTED]"
    # resolved: catalog merged, variables replaced
    assert "openrouter" in shown["models"]["providers"]
    assert shown["models"]["providers"]["local"]["baseUrl"] == "http://127.0.0.1:1234/v1"


def test_models_list_table(good, capsys):
    assert main(["models", "list", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    assert all(s not in out for s in SECRETS.values())
    lines = out.splitlines()
    assert lines[0].split() == ["DEFAULT", "REF", "ALIAS", "PROVIDER", "API", "CONTEXT", "INPUT",
                                "CREDENTIALS"]
    ref_col = lines[0].index("REF")
    rows = {line[ref_col:].split()[0]: line for line in lines[1:]}
    local = rows["local/qwen"].split()
    assert local == ["primary", "local/qwen", "Qwen", "local", "openai-completions", "32,768",
                     "text+image", "yes"]
    haiku = rows["anthropic/claude-haiku-4-5"].split()
    assert haiku[:2] == ["fallback", "1"] and haiku[-1] == "yes" and "200,000" in haiku
    # an unlisted hosted model named by the config is listed with default metadata
    future = rows["openai/gpt-9-future"].split()
    assert future[:2] == ["fallback", "2"] and future[-1] == "no" and "128,000" in future
    assert rows["openai/gpt-5.1"].split()[-1] == "no"  # OPENAI_API_KEY unset


def test_models_list_without_any_file(capsys):
    assert main(["models", "list"]) == 0
    out, err = capsys.readouterr()
    assert "anthropic/claude-opus-4-5" in out and "primary" not in out
    assert "no default model" in err


def test_cli_turns_any_config_error_into_exit_1(monkeypatch, capsys):
    """Other subcommands that load the config get the same clean error."""
    import bridge.config.commands as commands
    from bridge.config.load import ConfigError

    def boom(args):
        raise ConfigError("expected a string", file="x.json5", where="agents.defaults.model")

    monkeypatch.setattr(commands, "cmd_config_show", boom)
    assert main(["config", "show"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "x.json5: agents.defaults.model: expected a string"


@pytest.mark.parametrize("argv", [["run"], ["chat"], ["doctor"], ["pairing", "list"],
                                  ["config", "validate"], ["config", "show"],
                                  ["models", "list"]])
def test_a_config_error_is_one_status_for_every_command(tmp_path, capsys, argv):
    from bridge.cli import EXIT_CONFIG

    bad = tmp_path / "bad.json5"
    bad.write_text("{ dataDir: ")
    assert main([*argv, "-c", str(bad)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "bad.json5:1:" in err
    assert_no_traceback(err)
