"""The config edit engine: only the edited lines change; invalid and concurrent edits
write nothing; secrets are never echoed."""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path

import json5
import pytest

import bridge.config.edit as edit
from bridge.cli import main
from bridge.config.edit import (
    Change,
    ConcurrentEditError,
    EditError,
    InvalidEditError,
    apply_edit,
    edit_text,
    file_sha256,
    format_path,
    merge_changes,
    parse_path,
    plan_edit,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "config").glob("*.json5"))
TOKEN = "123456789:AAH-edit-secret-token-abcdefghijklmnop"
KEY = "sk-test-edit-secret-key-0123456789"
ENV = {"TELEGRAM_BOT_TOKEN": TOKEN, "LOCAL_KEY": KEY, "OPENAI_API_KEY": KEY,
       "OPENROUTER_API_KEY": KEY, "ANTHROPIC_API_KEY": KEY, "LITELLM_API_KEY": KEY}

# Every JSON5 feature a hand-edited file has: comments between keys and before colons,
# block comments, trailing commas, quoted, single-quoted and bare keys, ${VAR}s, hex.
HARD = """\
// Palaver, edited by hand for years.
/* A block comment
   over two lines. */
{
  // where the data lives
  dataDir: '~/.palaver-hard', // single quotes
  "health": { port: 0x2253, /* hex */ host: "127.0.0.1" },
  agents: {
    defaults: {
      model: {
        primary: "local/qwen3", // the workhorse
        fallbacks: [
          "anthropic/claude-sonnet-4-5",  // when the box is down
        ],
      },
      "models": {
        'local/qwen3': { alias: "Qwen" },
        "anthropic/claude-sonnet-4-5": { alias: "Sonnet", },
      },
      systemPrompt: "You are terse. \\"Really\\".",
    },
  },
  models: {
    providers: {
      local: {
        baseUrl: "http://127.0.0.1:1234/v1",
        apiKey: "${LOCAL_KEY}",
        models: [{ id: "qwen3", contextWindow: 32768 }, { id: "llama" }],
      },
    },
  },
  channels: {
    telegram: {
      botToken: "${TELEGRAM_BOT_TOKEN}",
      /* who may talk */ allowFrom: ["123", "456"],
      groups: {
        "*": { requireMention: true },
        "-1001234567890" /* family */ : {
          requireMention: false,
          topics: { "7": { model: "Sonnet" } },
        },
      },
    },
  },
}
// trailing comment
"""


def changed_old_lines(before: str, after: str) -> list[str]:
    """The lines of ``before`` that the edit removed or rewrote."""
    a, b = before.splitlines(), after.splitlines()
    out: list[str] = []
    for tag, i1, i2, _j1, _j2 in difflib.SequenceMatcher(None, a, b, autojunk=False
                                                         ).get_opcodes():
        if tag in ("replace", "delete"):
            out.extend(a[i1:i2])
    return out


def write(tmp_path: Path, text: str, name: str = "palaver.json5") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("text, parts", [
    ("channels.telegram.groups.-1001234567890.model",
     ("channels", "telegram", "groups", "-1001234567890", "model")),
    ('models.providers["my.lab"].apiKey', ("models", "providers", "my.lab", "apiKey")),
    ("agents.defaults.model.fallbacks[1]", ("agents", "defaults", "model", "fallbacks", 1)),
    ("channels.whatsapp.direct.+15551234567", ("channels", "whatsapp", "direct", "+15551234567")),
    ('groups["*"].topics.7', ("groups", "*", "topics", "7")),
    ("a['x\"y']", ("a", 'x"y')),
])
def test_paths_parse_and_print_back(text, parts):
    assert parse_path(text) == parts
    assert parse_path(format_path(parts)) == parts


@pytest.mark.parametrize("bad", ["", "a..b", "a.", ".a", "a[x]", "a[\"x]", "a]b"])
def test_bad_paths_are_refused(bad):
    with pytest.raises(EditError):
        parse_path(bad)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_edited_at_several_paths_change_only_those_lines(example, tmp_path):
    before = example.read_text("utf-8")
    original = json5.loads(before)
    path = write(tmp_path, before)
    changes = [
        Change.set("dataDir", "/srv/palaver"),
        Change.set("agents.defaults.compaction.keepRecentTurns", 9),
        Change.set("channels.telegram.groups.-1009999.requireMention", False),
        Change.set("store.retentionDays", 12),
    ]
    result = apply_edit(path, changes, env=ENV)
    after = path.read_text("utf-8")
    assert result.written and after == result.after
    data = json5.loads(after)
    assert data["dataDir"] == "/srv/palaver"
    assert data["agents"]["defaults"]["compaction"]["keepRecentTurns"] == 9
    assert data["channels"]["telegram"]["groups"]["-1009999"] == {"requireMention": False}
    assert data["store"]["retentionDays"] == 12
    # Everything else means what it meant ...
    for key in original:
        if key not in ("dataDir", "agents", "channels", "store"):
            assert data[key] == original[key]
    # ... and only the edited lines (a value replaced, an entry added to a one-line
    # object, the line before an insertion gaining a ",") were touched.
    for line in changed_old_lines(before, after):
        assert ("dataDir" in line or "keepRecentTurns" in line or "retentionDays" in line
                or "groups: {" in line or "compaction: {" in line or "telegram: {" in line
                or line.rstrip() + "," in after.splitlines()
                or line.strip() in ("}", "},")), line
    # Comments survive byte for byte.
    for line in before.splitlines():
        if line.strip().startswith("//"):
            assert line in after.splitlines()


def test_a_hand_edited_file_keeps_every_byte_outside_the_edits(tmp_path):
    path = write(tmp_path, HARD)
    result = apply_edit(path, [
        Change.set("agents.defaults.model.primary", "local/llama"),
        Change.set("channels.telegram.groups.-1001234567890.model", "local/llama"),
        Change.set("channels.telegram.groups.-1001234567890.topics.7.model", "Qwen"),
        Change.set("health.port", 9000),
        Change.unset("channels.telegram.groups.*"),
    ], env=ENV)
    after = path.read_text("utf-8")
    diff = [line for line in difflib.unified_diff(HARD.splitlines(), after.splitlines(),
                                                  lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert diff == [
        '-  "health": { port: 0x2253, /* hex */ host: "127.0.0.1" },',
        '+  "health": { port: 9000, /* hex */ host: "127.0.0.1" },',
        '-        primary: "local/qwen3", // the workhorse',
        '+        primary: "local/llama", // the workhorse',
        '-        "*": { requireMention: true },',
        '-          topics: { "7": { model: "Sonnet" } },',
        '+          topics: { "7": { model: "Qwen" } },',
        '+          model: "local/llama",',
    ], diff
    assert result.config.selection_for(
        "telegram", chat_kind="group", chat_id="-1001234567890").primary == "local/llama"
    # The ${VAR}s are still references, not values.
    assert '"${LOCAL_KEY}"' in after and '"${TELEGRAM_BOT_TOKEN}"' in after
    assert KEY not in after and TOKEN not in after


def test_new_entries_follow_the_files_indentation_and_key_quoting(tmp_path):
    text = '{\n    "agents": {\n        "defaults": {\n            "systemPrompt": "x"\n' \
           '        }\n    }\n}\n'
    path = write(tmp_path, text)
    apply_edit(path, [Change.set("agents.defaults.imageHistoryTurns", 2),
                      Change.set("logging.level", "debug")], env=ENV)
    assert path.read_text() == (
        '{\n    "agents": {\n        "defaults": {\n            "systemPrompt": "x",\n'
        '            "imageHistoryTurns": 2\n        }\n    },\n'
        '    "logging": { "level": "debug" }\n}\n')


def test_long_new_values_go_one_entry_a_line(tmp_path):
    path = write(tmp_path, '{\n  channels: {\n    telegram: {},\n  },\n}\n')
    apply_edit(path, [Change.set("channels.telegram.allowFrom",
                                 [f"10000000{i}" for i in range(9)])], env=ENV)
    after = path.read_text()
    assert max(len(line) for line in after.splitlines()) <= 88
    assert '      allowFrom: [\n        "100000000",\n' in after
    assert json5.loads(after)["channels"]["telegram"]["allowFrom"][8] == "100000008"


@pytest.mark.parametrize("before, path, after", [
    # own line, trailing comma and comment go with it; the comment above stays
    ("{\n  // keep me\n  a: 1, // gone\n  b: 2,\n}\n", "a", "{\n  // keep me\n  b: 2,\n}\n"),
    # the last entry without a trailing comma: the previous comma goes
    ("{\n  a: 1,\n  b: 2\n}\n", "b", "{\n  a: 1\n}\n"),
    # inline
    ("{ a: 1, b: 2, c: 3 }", "b", "{ a: 1, c: 3 }"),
    ("{ a: 1, b: 2 }", "b", "{ a: 1 }"),
    ("{ a: { x: 1 } }", "a.x", "{ a: {} }"),
    # array entries
    ('{ f: ["a", "b", "c"] }', "f[1]", '{ f: ["a", "c"] }'),
    ("{\n  f: [\n    'a',\n    'b',\n  ],\n}", "f[0]", "{\n  f: [\n    'b',\n  ],\n}"),
    # a missing path changes nothing
    ("{ a: 1 }", "z.y", "{ a: 1 }"),
])
def test_unset_removes_the_entry_with_its_comma(before, path, after):
    assert edit_text(before, [Change.unset(path)]) == after
    assert json5.loads(after) is not None


def test_crlf_files_stay_crlf(tmp_path):
    path = write(tmp_path, '{\r\n  dataDir: "/a",\r\n}\r\n')
    apply_edit(path, [Change.set("store.retentionDays", 3)], env=ENV)
    raw = path.read_bytes()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert raw.startswith(b'{\r\n  dataDir: "/a",\r\n')


def test_patch_merges_objects_key_by_key_and_null_removes(tmp_path):
    path = write(tmp_path, HARD)
    patch = json5.loads('{ agents: { defaults: { systemPrompt: null, '
                        'model: { fallbacks: ["local/llama"] } } }, logging: { level: "debug" } }')
    result = apply_edit(path, merge_changes(patch, json5.loads(HARD)), env=ENV)
    after = path.read_text()
    assert "// the workhorse" in after and "systemPrompt" not in after
    model = result.config.agents.defaults.model
    assert model is not None and model.primary == "local/qwen3"
    assert model.fallbacks == ("local/llama",)
    assert result.config.logging.level == "debug"


# --------------------------------------------------------------------------- refusals


def test_an_invalid_edit_writes_nothing_and_says_what_validate_says(tmp_path, capsys,
                                                                     monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    path = write(tmp_path, HARD)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = path.read_bytes()
    assert main(["config", "set", "-c", str(path), "channels.telegram.groups.-1001234567890"
                 ".model", "nope/nothing"]) == 1
    err = capsys.readouterr().err
    assert path.read_bytes() == before and path.stat().st_mtime_ns == 1_000_000_000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file
    # The same lines `config validate` prints for that text.
    (tmp_path / "other").mkdir()
    bad = write(tmp_path / "other", edit_text(HARD, [Change.set(
                    "channels.telegram.groups.-1001234567890.model", "nope/nothing")]))
    assert main(["config", "validate", "-c", str(bad)]) == 1
    validate = capsys.readouterr().err
    def strip(text: str) -> list[str]:
        return [line.split(": ", 1)[1] for line in text.splitlines()
                if line.startswith(str(tmp_path))]

    assert strip(err) and strip(err) == strip(validate)
    assert "channels.telegram.groups" in err and "nothing was written" in err
    with pytest.raises(InvalidEditError) as info:
        apply_edit(path, [Change.set("health.port", 70000)], env=ENV)
    assert info.value.error.problems[0].where == "health.port"
    assert path.read_bytes() == before


def test_a_path_through_a_value_is_refused(tmp_path):
    path = write(tmp_path, HARD)
    before = path.read_bytes()
    with pytest.raises(EditError, match="dataDir is a value"):
        apply_edit(path, [Change.set("dataDir.x", 1)], env=ENV)
    assert path.read_bytes() == before


def test_a_concurrent_edit_is_refused(tmp_path, monkeypatch):
    path = write(tmp_path, HARD)
    theirs = HARD.replace("'~/.palaver-hard'", "'~/.theirs'")
    real = edit.edit_text

    def racing(text, changes):  # someone saves the file while our edit is computed
        path.write_text(theirs)
        return real(text, changes)

    monkeypatch.setattr(edit, "edit_text", racing)
    with pytest.raises(ConcurrentEditError):
        apply_edit(path, [Change.set("store.retentionDays", 3)], env=ENV)
    assert path.read_text() == theirs
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_edit_based_on_an_older_read_is_refused(tmp_path):
    path = write(tmp_path, HARD)
    seen = file_sha256(path)
    path.write_text(HARD.replace("0x2253", "8000"))
    with pytest.raises(ConcurrentEditError):
        apply_edit(path, [Change.set("store.retentionDays", 3)], env=ENV, expect_sha256=seen)
    assert "8000" in path.read_text() and "retentionDays" not in path.read_text()


def test_the_write_keeps_mode_and_symlink(tmp_path):
    real = write(tmp_path, HARD, "real.json5")
    real.chmod(0o640)
    link = tmp_path / "palaver.json5"
    link.symlink_to(real)
    apply_edit(link, [Change.set("store.retentionDays", 3)], env=ENV)
    assert link.is_symlink() and "retentionDays: 3" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_dry_run_writes_nothing(tmp_path):
    path = write(tmp_path, HARD)
    result = apply_edit(path, [Change.set("store.retentionDays", 3)], env=ENV, dry_run=True)
    assert not result.written and path.read_text() == HARD
    assert "+  store: { retentionDays: 3 }," in result.diff()
    assert plan_edit(path, [Change.unset("nothing.here")], env=ENV).changed is False


# --------------------------------------------------------------------------- secrets


def test_secrets_are_never_echoed(tmp_path, capsys, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    path = write(tmp_path, HARD)
    secret = "987654321:AAFsecret-never-shown-abcdefghijklmno"
    for argv in (["config", "set", "-c", str(path), "channels.telegram.botToken", secret,
                  "--dry-run"],
                 ["config", "set", "-c", str(path), "channels.telegram.botToken", secret],
                 ["config", "set", "-c", str(path), "models.providers.local.apiKey",
                  "sk-hidden-provider-key-99", "--dry-run"],
                 ["config", "get", "-c", str(path), "channels.telegram.botToken"],
                 ["config", "get", "-c", str(path), "models.providers.local"],
                 # invalid: a webhook secret with a bad character is not repeated
                 ["config", "set", "-c", str(path), "channels.telegram.webhookSecret",
                  "bad secret value!"],
                 ["config", "unset", "-c", str(path), "channels.telegram.botToken",
                  "--dry-run"]):
        main(argv)
        out = capsys.readouterr()
        both = out.out + out.err
        for leaked in (secret, secret.split(":")[1], "sk-hidden-provider-key-99",
                       "bad secret value!", TOKEN, KEY):
            assert leaked not in both, (argv, both)
    assert secret in path.read_text()  # it was written, just never shown


def test_env_writes_a_reference(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("LOCAL_KEY", KEY)
    monkeypatch.setenv("MY_KEY", "sk-from-env-0000000")
    path = write(tmp_path, HARD)
    assert main(["config", "set", "-c", str(path), "models.providers.local.apiKey",
                 "--env", "MY_KEY"]) == 0
    assert 'apiKey: "${MY_KEY}"' in path.read_text()
    assert "sk-from-env" not in capsys.readouterr().out
    assert main(["config", "set", "-c", str(path), "models.providers.local.apiKey",
                 "--env", "NOT_SET_ANYWHERE"]) == 1
    err = capsys.readouterr().err
    assert "NOT_SET_ANYWHERE is not set" in err and 'apiKey: "${MY_KEY}"' in path.read_text()


@pytest.mark.parametrize("value, expected, text", [
    ("Sonnet", "Sonnet", 'model: "Sonnet"'),
    ('"Sonnet"', "Sonnet", 'model: "Sonnet"'),
    ('{primary: "local/qwen3", fallbacks: ["Sonnet"]}',
     {"primary": "local/qwen3", "fallbacks": ["Sonnet"]},
     'model: { primary: "local/qwen3", fallbacks: ["Sonnet"] }'),
])
def test_cli_set_takes_json5_values(tmp_path, capsys, monkeypatch, value, expected, text):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    path = write(tmp_path, HARD)
    assert main(["config", "set", "-c", str(path), "channels.telegram.model", value]) == 0
    assert json5.loads(path.read_text())["channels"]["telegram"]["model"] == expected
    assert text in path.read_text()
    capsys.readouterr()
    assert main(["config", "get", "-c", str(path), "channels.telegram.model.primary"]) == 0
    assert capsys.readouterr().out.strip() == ("local/qwen3" if isinstance(expected, dict)
                                               else "Sonnet")
    assert main(["config", "get", "-c", str(path), "channels.telegram.nothing"]) == 1
    assert "no value at channels.telegram.nothing" in capsys.readouterr().err
    assert main(["config", "set", "-c", str(path), "x", "{broken"]) == 1


def test_cli_patch_and_unset(tmp_path, capsys, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    path = write(tmp_path, HARD)
    patch = write(tmp_path, "// mine\n{ channels: { telegram: { groups: { "
                  '"-100555": { requireMention: false } } } } }', "patch.json5")
    assert main(["config", "patch", "-c", str(path), str(patch), "--dry-run"]) == 0
    out = capsys.readouterr().out
    added = [line for line in out.splitlines() if line.startswith("+")
             and not line.startswith("+++")]
    assert len(added) == 1 and '"-100555": { requireMention: false },' in out
    assert "-100555" not in path.read_text()
    assert main(["config", "patch", "-c", str(path), str(patch)]) == 0
    assert "-100555" in path.read_text()
    assert main(["config", "unset", "-c", str(path), 'channels.telegram.groups["-100555"]']) == 0
    assert path.read_text() == HARD
    assert main(["config", "unset", "-c", str(path), "channels.telegram.groups.-100555"]) == 0
    assert "no change" in capsys.readouterr().out


def test_a_block_comment_after_the_last_entry_stays_with_it():
    assert edit_text("{\n  a: 1, /* c */\n}\n", [Change.set("b", 2)]) == \
        "{\n  a: 1, /* c */\n  b: 2,\n}\n"


# --------------------------------------------------------------------------- targeted cases


def test_keys_that_need_quoting_in_paths(tmp_path):
    path = write(tmp_path, HARD)
    result = apply_edit(path, [
        Change.set('models.providers["my.lab"]', {"baseUrl": "http://127.0.0.1:9/v1",
                                                   "models": [{"id": "m"}]}),
        Change.set("channels.telegram.direct.+15551234567.model", "Sonnet"),
        Change.set('channels.telegram.groups["*"].requireMention', False),
        Change.set("channels.telegram.groups.-1001234567890.requireMention", True),
    ], env=ENV)
    after = path.read_text()
    assert '"my.lab": {' in after and '"+15551234567": { model: "Sonnet" }' in after
    assert '"*": { requireMention: false },' in after
    assert '"-1001234567890" /* family */ : {\n          requireMention: true,' in after
    assert "my.lab" in result.config.models.providers
    assert result.config.selection_for("telegram", chat_kind="direct",
                                       chat_id="+15551234567").primary == "Sonnet"
    # and back: the file is what it was
    apply_edit(path, [Change.unset('models.providers["my.lab"]'),
                      Change.unset("channels.telegram.direct"),
                      Change.set('channels.telegram.groups["*"].requireMention', True),
                      Change.set("channels.telegram.groups.-1001234567890.requireMention",
                                 False)], env=ENV)
    assert path.read_text() == HARD


@pytest.mark.parametrize("before, after", [
    ("{}", "{ a: 1 }"),
    ("{\n}", "{\n  a: 1,\n}"),
    ("{ // comment\n}", "{ // comment\n  a: 1,\n}"),
    ("{\n  // comment\n}", "{\n  // comment\n  a: 1,\n}"),
    # regression: the comment was dropped ("{ a: 1 }")
    ("{ /* comment */ }", "{ /* comment */ a: 1 }"),
    ("{\n  x: 0 // last\n}", "{\n  x: 0, // last\n  a: 1\n}"),
    ("{\n  x: 0, // last\n}", "{\n  x: 0, // last\n  a: 1,\n}"),
    ("{\n  x: 0 /* last */\n}", "{\n  x: 0, /* last */\n  a: 1\n}"),
    ("{\n  x: 0\n}", "{\n  x: 0,\n  a: 1\n}"),  # the last line has no newline
    ("{\r\n  x: 0,\r\n}\r\n", "{\r\n  x: 0,\r\n  a: 1,\r\n}\r\n"),
    ("\ufeff{\n\tx: 0,\n}\n", "\ufeff{\n\tx: 0,\n\ta: 1,\n}\n"),
])
def test_inserting_a_key(before, after):
    assert edit_text(before, [Change.set("a", 1)]) == after


def test_a_file_whose_last_line_has_no_newline(tmp_path):
    text = HARD.rstrip("\n")
    path = write(tmp_path, text)
    apply_edit(path, [Change.set("logging.level", "debug"), Change.unset("dataDir")],
               env=ENV)
    after = path.read_text()
    assert after.endswith("\n}\n// trailing comment")
    assert '  logging: { level: "debug" },\n}' in after and "dataDir" not in after


def test_a_multi_line_object_value_is_indented_like_the_file(tmp_path):
    path = write(tmp_path, HARD)
    value = {"primary": "local/llama", "fallbacks": ["anthropic/claude-sonnet-4-5",
                                                      "local/qwen3"]}
    apply_edit(path, [Change.set("channels.telegram.groups.-1001234567890.model", value)],
               env=ENV)
    after = path.read_text()
    assert (
        '          topics: { "7": { model: "Sonnet" } },\n'
        '          model: {\n'
        '            primary: "local/llama",\n'
        '            fallbacks: ["anthropic/claude-sonnet-4-5", "local/qwen3"],\n'
        '          },\n'
        '        },\n') in after
    assert json5.loads(after)["channels"]["telegram"]["groups"]["-1001234567890"][
        "model"] == value


def test_the_indentation_unit_comes_from_entries_not_comment_lines():
    # regression: " * " lines of a block comment made the unit one space
    text = "/*\n * Palaver\n */\n{\n  a: {},\n}\n"
    after = edit_text(text, [Change.set("a.b", {"x": ["y" * 30, "z" * 30, "w" * 30]})])
    assert after == ("/*\n * Palaver\n */\n{\n  a: {\n    b: {\n      x: [\n"
                     f'        "{"y" * 30}",\n        "{"z" * 30}",\n        "{"w" * 30}",\n'
                     "      ],\n    },\n  },\n}\n")


def test_replacing_a_var_reference(tmp_path):
    path = write(tmp_path, HARD)
    env = {**ENV, "OTHER_KEY": "sk-other-key-value-000000000"}
    result = apply_edit(path, [Change.set("models.providers.local.apiKey",
                                          edit.env_ref("OTHER_KEY"))], env=env)
    assert changed_old_lines(HARD, path.read_text()) == ['        apiKey: "${LOCAL_KEY}",']
    assert 'apiKey: "${OTHER_KEY}",' in path.read_text()
    assert "sk-other-key-value" not in result.diff() + path.read_text()
    assert result.config.models.providers["local"].apiKey is not None


def test_unset_keeps_a_comment_before_an_inline_last_entry():
    # regression (found by test_edit_properties): "{ a: 1 }", the comment gone
    assert edit_text("{ a: 1, /* keep */ b: 2 }", [Change.unset("b")]) == \
        "{ a: 1 /* keep */ }"


def test_unset_removes_every_duplicate_key():
    # regression: the earlier "a" showed through ({"a": 1, "b": 2}); the engine then
    # refused with "internal error"
    assert edit_text("{ a: 1, b: 2, a: 3 }", [Change.unset("a")]) == "{ b: 2 }"
    assert edit_text("{ f: [1, 1, 2] }", [Change.unset("f[0]")]) == "{ f: [1, 2] }"


def test_unsetting_a_missing_array_entry_changes_nothing(tmp_path):
    # regression: "fallbacks[3]: the array has 1 entries" although a missing path is a
    # no-op for unset (a missing key already was)
    path = write(tmp_path, HARD)
    for missing in ("agents.defaults.model.fallbacks[3]",
                    "agents.defaults.model.fallbacks[3].x", "models.providers.local.x[0]"):
        assert apply_edit(path, [Change.unset(missing)], env=ENV).changed is False
    assert path.read_text() == HARD
    with pytest.raises(EditError, match=r"fallbacks\[3\]: the array has 1 entries"):
        apply_edit(path, [Change.set("agents.defaults.model.fallbacks[3]", "x")], env=ENV)


def test_a_lone_surrogate_is_written_as_an_escape(tmp_path):
    # regression: UnicodeEncodeError (a traceback) when the file was written
    path = write(tmp_path, HARD)
    result = apply_edit(path, [Change.set("agents.defaults.systemPrompt", "x\ud800y")],
                        env=ENV)
    assert 'systemPrompt: "x\\ud800y",' in path.read_text("utf-8")
    assert result.config.agents.defaults.systemPrompt == "x\ud800y"


def test_an_empty_object_in_a_patch_changes_nothing():
    # regression: {"health": {}} replaced the whole health object (RFC 7396: no change)
    data = json5.loads(HARD)
    assert merge_changes({"health": {}}, data) == []
    assert merge_changes({"logging": {}}, data) == [Change.set("logging", {})]
    assert edit_text(HARD, merge_changes({"health": {}, "agents": {"defaults": {}}},
                                         data)) == HARD


def test_secrets_are_not_in_diffs_or_errors(tmp_path):
    path = write(tmp_path, HARD)
    secret = "sk-literal-secret-abcdef-123456"
    result = apply_edit(path, [Change.set("models.providers.local.apiKey", secret)],
                        env=ENV, dry_run=True)
    assert secret not in result.diff()
    assert '+        apiKey: "[REDACTED: new value]",' in result.diff()
    header = "Bearer sk-header-secret-0123456789"
    for changes in ([Change.set("models.providers.local.apiKey", secret),
                     Change.set("health.port", 70000)],
                    [Change.set("models.providers.local.headers", {"Authorization": header}),
                     Change.set("health.port", 70000)],
                    [Change.set("channels.telegram.botToken", f"12:{secret} !")]):
        with pytest.raises(InvalidEditError) as info:
            apply_edit(path, changes, env=ENV)
        message = str(info.value) + info.value.error.render()
        assert secret not in message and "sk-header-secret" not in message, message
    assert path.read_text() == HARD


def test_a_dry_run_shows_that_a_secret_changed(tmp_path):
    # regression: both sides read "[REDACTED]", so the diff was empty (and `config set
    # --dry-run` printed nothing) although the file would change
    old, new = "sk-old-literal-secret-0000000", "sk-new-literal-secret-1111111"
    path = write(tmp_path, HARD.replace('"${LOCAL_KEY}"', f'"{old}"'))
    result = apply_edit(path, [Change.set("models.providers.local.apiKey", new)], env=ENV,
                        dry_run=True)
    diff = result.diff()
    assert '-        apiKey: "[REDACTED]",\n+        apiKey: "[REDACTED: new value]",\n' in diff
    assert old not in diff and new not in diff
    same = apply_edit(path, [Change.set("models.providers.local.apiKey", old),
                             Change.set("dataDir", "/srv")], env=ENV, dry_run=True).diff()
    assert "new value" not in same and "dataDir" in same


def test_a_change_between_the_read_and_the_rename_is_refused(tmp_path, monkeypatch):
    path = write(tmp_path, HARD)
    theirs = HARD.replace("'~/.palaver-hard'", "'~/.theirs'")
    real = os.fsync

    def racing(fd):  # someone saves while our temporary file is being flushed
        if not path.read_text() == theirs:
            path.write_text(theirs)
        return real(fd)

    monkeypatch.setattr(edit.os, "fsync", racing)
    with pytest.raises(ConcurrentEditError, match="nothing was written"):
        apply_edit(path, [Change.set("store.retentionDays", 3)], env=ENV)
    assert path.read_text() == theirs
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_symlinked_config_in_another_directory(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "conf").mkdir()
    real = write(tmp_path / "etc", HARD)
    real.chmod(0o600)
    link = tmp_path / "conf" / "palaver.json5"
    link.symlink_to(Path("..") / "etc" / "palaver.json5")
    apply_edit(link, [Change.set("store.retentionDays", 3)], env=ENV)
    assert link.is_symlink() and os.readlink(link) == "../etc/palaver.json5"
    assert "retentionDays: 3" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "conf").iterdir()) == ["palaver.json5"]
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["palaver.json5"]


def test_mode_0600_is_kept(tmp_path):
    path = write(tmp_path, HARD)
    path.chmod(0o600)
    apply_edit(path, [Change.set("store.retentionDays", 3)], env=ENV)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "retentionDays: 3" in \
        path.read_text()


def test_a_read_only_directory_is_a_clear_error_and_nothing_is_written(tmp_path,
                                                                       monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = write(folder, HARD)
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: have mkstemp fail as the kernel would
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(edit.tempfile, "mkstemp", refuse)
    try:
        with pytest.raises(EditError) as info:
            apply_edit(path, [Change.set("store.retentionDays", 3)], env=ENV)
        assert str(info.value) == (f"{path}: cannot write a temporary file next to it: "
                                   "Permission denied")
        assert path.read_text() == HARD and sorted(os.listdir(folder)) == ["palaver.json5"]
    finally:
        folder.chmod(0o755)


def test_editors_racing_never_lose_an_update(tmp_path):
    import threading

    path = write(tmp_path, HARD)
    barrier = threading.Barrier(6)
    outcome: dict[int, str] = {}

    def editor(i: int) -> None:
        barrier.wait()
        try:
            apply_edit(path, [Change.set(f"channels.telegram.groups.-100{i}.requireMention",
                                         True)], env=ENV)
            outcome[i] = "written"
        except ConcurrentEditError:
            outcome[i] = "refused"

    threads = [threading.Thread(target=editor, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    groups = json5.loads(path.read_text())["channels"]["telegram"]["groups"]
    written = {i for i, what in outcome.items() if what == "written"}
    assert len(outcome) == 6 and written
    # every edit that said "written" is in the file, every refused one is not
    assert {k for k in groups if k.startswith("-100") and len(k) == 5} == \
        {f"-100{i}" for i in written}


def test_a_bom_crlf_and_tabs_file_keeps_all_three(tmp_path):
    text = "\ufeff" + HARD.replace("  ", "\t").replace("\n", "\r\n")
    path = write(tmp_path, text)
    apply_edit(path, [Change.set("channels.telegram.groups.-100.requireMention", False),
                      Change.unset("health"), Change.set("logging.level", "debug"),
                      Change.set("agents.defaults.model.fallbacks",
                                 ["local/llama", "anthropic/claude-sonnet-4-5"])], env=ENV)
    raw = path.read_bytes()
    assert raw.startswith("\ufeff".encode()) and b"\n" not in raw.replace(b"\r\n", b"")
    assert b"  " not in raw
    assert ('\t\t\t\t"-100": { requireMention: false },\r\n\t\t\t},\r\n\t\t},\r\n\t},\r\n'
            '\tlogging: { level: "debug" },\r\n}\r\n// trailing comment\r\n') in raw.decode()
    assert changed_old_lines(text, raw.decode("utf-8")) == [
        '\t"health": { port: 0x2253, /* hex */ host: "127.0.0.1" },',
        "\t\t\t\tfallbacks: [",
        '\t\t\t\t\t"anthropic/claude-sonnet-4-5",\t// when the box is down', "\t\t\t\t],"]
