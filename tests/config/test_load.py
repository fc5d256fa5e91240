"""Loading: JSON5, ${ENV}, the catalog merge, validation errors with file and dotted path."""

from __future__ import annotations

import logging
import textwrap

import pytest

from bridge.config.load import ConfigError, find_config_path, load_config, redacted
from bridge.models.catalog import BUILTIN_PROVIDER_IDS

LOCAL = """
  models: { providers: { local: { baseUrl: "http://127.0.0.1:1234/v1",
    models: [{ id: "small" }, { id: "big", contextWindow: 65536 }] } } },
"""


def write(tmp_path, body: str, name: str = "palaver.json5"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def load(tmp_path, body: str, env: dict[str, str] | None = None):
    return load_config(write(tmp_path, body), env=env or {})


def error_of(tmp_path, body: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body, env)
    return info.value


# --------------------------------------------------------------------------- errors


def test_json5_syntax_error_has_file_line_and_column(tmp_path):
    err = error_of(tmp_path, '{\n  agents: {\n    defaults: { model: "a/b" ]\n  },\n}\n')
    text = str(err)
    assert text.startswith(f"{tmp_path / 'palaver.json5'}:3:")
    problem = err.problems[0]
    assert problem.line == 3 and problem.column and problem.column > 20
    assert "invalid JSON5" in text


@pytest.mark.parametrize("body", ['{\n  a: "unterminated\n}\n', '{ a: 1,\n  b\n}',
                                  '{ a: "x"\t\x01 }', "{ a: 'x\r' }"])
def test_json5_syntax_error_is_one_line_per_problem(tmp_path, body):
    err = error_of(tmp_path, body)
    assert len(err.problems) == 1 and "invalid JSON5" in str(err)
    assert "\n" not in str(err) and "\r" not in str(err)
    assert all(c.isprintable() for c in str(err))


def test_duplicate_key_is_a_syntax_error_with_position(tmp_path):
    err = error_of(tmp_path, '{\n  dataDir: "/a",\n  dataDir: "/b",\n}\n')
    assert err.problems[0].line == 3
    assert "duplicate key 'dataDir'" in str(err)


def test_empty_file_and_non_object(tmp_path):
    assert "empty" in str(error_of(tmp_path, "  \n"))
    assert "expected a JSON5 object" in str(error_of(tmp_path, "[1, 2]"))


def test_wrong_type_names_dotted_path_and_expectation(tmp_path):
    err = error_of(tmp_path, """{
      agents: { defaults: { model: { primary: "local/small", fallbacks: ["local/big", 7] } } },
      """ + LOCAL + "}")
    assert "palaver.json5: agents.defaults.model.fallbacks[1]: expected a valid string, got 7" \
        in str(err)


def test_wrong_number_and_literal(tmp_path):
    err = error_of(tmp_path, """{ models: { providers: { x: { api: "openai-chat",
        models: [{ id: "m", contextWindow: "huge" }] } } } }""")
    text = str(err)
    assert "models.providers.x.api: expected 'openai-responses', 'openai-completions' or " \
        "'anthropic-messages', got 'openai-chat'" in text
    assert "models.providers.x.models[0].contextWindow: expected a valid integer" in text


def test_model_selection_of_wrong_shape(tmp_path):
    err = error_of(tmp_path, '{ channels: { telegram: { groups: { "-100": { model: 5 } } } } }')
    assert 'channels.telegram.groups["-100"].model: expected a model ref string or ' \
        "{primary, fallbacks}" in str(err)


def test_unknown_key_suggests_the_close_one(tmp_path):
    err = error_of(tmp_path, '{ agents: { defaults: { modle: "local/small" } } }')
    assert "agents.defaults.modle: unknown key 'modle' (did you mean 'model'?)" in str(err)
    err = error_of(tmp_path, '{ models: { providers: { x: { baseURL: "http://h" } } } }')
    assert "models.providers.x.baseURL: unknown key 'baseURL' (did you mean 'baseUrl'?)" \
        in str(err)
    err = error_of(tmp_path, "{ agent: {} }")
    assert "agent: unknown key 'agent' (did you mean 'agents'?)" in str(err)


def test_several_problems_are_all_reported(tmp_path):
    err = error_of(tmp_path, "{ agent: {}, health: { port: 0 } }")
    assert len(err.problems) == 2
    assert len(str(err).splitlines()) == 2


def test_unknown_provider_in_a_ref(tmp_path):
    err = error_of(tmp_path, "{" + LOCAL + ' agents: { defaults: { model: "lokal/small" } } }')
    text = str(err)
    assert "palaver.json5: agents.defaults.model: unknown provider 'lokal'" in text
    assert "did you mean 'local'?" in text


def test_unknown_model_on_a_custom_provider(tmp_path):
    err = error_of(tmp_path, "{" + LOCAL + ' agents: { defaults: { model: { primary: "local/smal" } } } }')
    assert "agents.defaults.model.primary: provider 'local' lists no model 'smal' " \
        "(did you mean 'small'?)" in str(err)


def test_unknown_alias(tmp_path):
    err = error_of(tmp_path, "{" + LOCAL + """ agents: { defaults: {
        model: { primary: "local/small", fallbacks: ["Bigg"] },
        models: { "local/big": { alias: "Big" } } } } }""")
    assert "agents.defaults.model.fallbacks[0]: unknown alias 'Bigg' (did you mean 'Big'?" \
        in str(err)


def test_duplicate_fallback(tmp_path):
    err = error_of(tmp_path, "{" + LOCAL + """ agents: { defaults: {
        model: { primary: "local/small", fallbacks: ["local/big", "BIG"] },
        models: { "local/big": { alias: "Big" } } } } }""")
    assert "agents.defaults.model.fallbacks[1]: 'local/big' is named twice " \
        "(already fallbacks[0])" in str(err)
    err = error_of(tmp_path, "{" + LOCAL + """ agents: { defaults: {
        model: { primary: "local/small", fallbacks: ["local/small"] } } } }""")
    assert "fallbacks[0]: 'local/small' is named twice (already the primary)" in str(err)


def test_refs_are_checked_everywhere_in_the_tree(tmp_path):
    err = error_of(tmp_path, "{" + LOCAL + """
      agents: { defaults: { compaction: { model: "nope/x" }, models: { "nope/y": {} } } },
      channels: { telegram: {
        model: "nope/a",
        groups: { "-1": { model: "nope/b", topics: { "7": { model: "nope/c" } } } },
        direct: { "42": { model: { primary: "local/small", fallbacks: ["nope/d"] } } },
      }, whatsapp: { model: "nope/e" }, console: { model: "nope/f" } } }""")
    wheres = {p.where for p in err.problems}
    assert wheres == {
        "agents.defaults.compaction.model",
        'agents.defaults.models["nope/y"]',
        "channels.telegram.model",
        'channels.telegram.groups["-1"].model',
        'channels.telegram.groups["-1"].topics["7"].model',
        'channels.telegram.direct["42"].model.fallbacks[0]',
        "channels.whatsapp.model",
        "channels.console.model",
    }


def test_duplicate_alias_and_alias_keys(tmp_path):
    err = error_of(tmp_path, "{" + LOCAL + """ agents: { defaults: { models: {
        "local/small": { alias: "Fast" }, "local/big": { alias: "fast" }, "Big": {} } } } }""")
    text = str(err)
    assert "alias 'fast' is already used by 'local/small'" in text
    assert "agents.defaults.models.Big: 'Big' is not a model ref" in text


def test_missing_env_var_names_it_and_the_path(tmp_path):
    err = error_of(tmp_path, '{ channels: { telegram: { botToken: "${TG_TOKEN}" } } }')
    assert "palaver.json5: channels.telegram.botToken: environment variable TG_TOKEN is not set" \
        in str(err)


def test_no_secret_in_an_error_message(tmp_path):
    err = error_of(tmp_path, '{ models: { providers: { x: { apiKey: ["sk-very-secret"] } } } }')
    assert "models.providers.x.apiKey" in str(err) and "sk-very-secret" not in str(err)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        find_config_path(str(tmp_path / "nope.json5"))
    with pytest.raises(ConfigError, match=r"\$PALAVER_CONFIG"):
        find_config_path(None, env={"PALAVER_CONFIG": str(tmp_path / "nope.json5")})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "gone.json5")


# --------------------------------------------------------------------------- finding


def test_find_config_path_order(tmp_path, monkeypatch):
    home_cfg = tmp_path / "home" / ".palaver" / "palaver.json5"
    home_cfg.parent.mkdir(parents=True)
    assert find_config_path(None, env={}) is None
    home_cfg.write_text("{}")
    assert find_config_path(None, env={}) == home_cfg
    cwd_cfg = tmp_path / "palaver.json5"  # conftest chdirs into tmp_path
    cwd_cfg.write_text("{}")
    assert find_config_path(None, env={}).resolve() == cwd_cfg.resolve()
    env_cfg = write(tmp_path, "{}", "env.json5")
    assert find_config_path(None, env={"PALAVER_CONFIG": str(env_cfg)}) == env_cfg
    flag_cfg = write(tmp_path, "{}", "flag.json5")
    assert find_config_path(str(flag_cfg), env={"PALAVER_CONFIG": str(env_cfg)}) == flag_cfg
    monkeypatch.setenv("PALAVER_CONFIG", str(env_cfg))
    assert find_config_path(None) == env_cfg


def test_no_file_means_builtin_defaults():
    config = load_config(None, env={"OPENAI_API_KEY": "sk-oa"})
    assert set(config.models.providers) == BUILTIN_PROVIDER_IDS
    assert config.default_selection().primary is None  # the core discovers a local model
    assert config.model("openai/gpt-5.1").api_key.get_secret_value() == "sk-oa"
    assert config.model("anthropic/claude-opus-4-5").api_key is None


# --------------------------------------------------------------------------- ${VAR}


def test_env_interpolation_in_every_string(tmp_path):
    config = load(tmp_path, """{
      dataDir: "${BASE}/data",
      models: { providers: { local: { baseUrl: "http://${HOST}:${PORT}/v1", apiKey: "${KEY}",
        headers: { "X-Who": "${WHO}" }, models: [{ id: "${MODEL}" }] } } },
      agents: { defaults: { model: "local/${MODEL}", systemPrompt: "costs $${NOT_A_VAR}" } },
    }""", env={"BASE": "/srv", "HOST": "10.0.0.5", "PORT": "8000", "KEY": "sk-k",
               "WHO": "me", "MODEL": "qwen"})
    assert config.dataDir == "/srv/data"
    m = config.model(config.default_selection().primary)
    assert (m.ref, m.base_url, m.headers) == ("local/qwen", "http://10.0.0.5:8000/v1",
                                               {"X-Who": "me"})
    assert m.api_key.get_secret_value() == "sk-k"
    assert config.agents.defaults.systemPrompt == "costs ${NOT_A_VAR}"


def test_missing_builtin_key_only_warns(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    config = load(tmp_path, '{ models: { providers: { anthropic: { apiKey: "${ANTHROPIC_API_KEY}" } } } }')
    assert config.model("anthropic/claude-sonnet-4-5").api_key is None
    assert "ANTHROPIC_API_KEY is not set" in caplog.text
    config = load(tmp_path, '{ models: { providers: { anthropic: { apiKey: "${ANTHROPIC_API_KEY}" } } } }',
                  env={"ANTHROPIC_API_KEY": "sk-ant"})
    assert config.model("anthropic/claude-sonnet-4-5").api_key.get_secret_value() == "sk-ant"


def test_builtin_keys_come_from_env(tmp_path):
    env = {"ANTHROPIC_API_KEY": "a1", "OPENAI_API_KEY": "o1", "OPENROUTER_API_KEY": "r1"}
    config = load(tmp_path, "{}", env)
    keys = {pid: config.models.providers[pid].apiKey.get_secret_value()
            for pid in BUILTIN_PROVIDER_IDS}
    assert keys == {"anthropic": "a1", "openai": "o1", "openrouter": "r1"}


# --------------------------------------------------------------------------- merge / replace


def test_merge_adds_builtins_and_replace_does_not(tmp_path):
    merged = load(tmp_path, "{" + LOCAL + "}")
    assert list(merged.models.providers) == ["local", "anthropic", "openai", "openrouter"]
    replaced = load(tmp_path, "{" + LOCAL.replace("models: {", 'models: { mode: "replace",', 1) + "}")
    assert list(replaced.models.providers) == ["local"]
    err = error_of(tmp_path, "{" + LOCAL.replace("models: {", 'models: { mode: "replace",', 1)
                   + ' agents: { defaults: { model: "anthropic/claude-sonnet-4-5" } } }')
    assert "unknown provider 'anthropic'" in str(err)


def test_file_provider_overrides_builtin_field_by_field(tmp_path):
    config = load(tmp_path, """{ models: { providers: { anthropic: {
        baseUrl: "http://127.0.0.1:9999",
        headers: { "anthropic-beta": "x" },
        models: [{ id: "claude-sonnet-4-5", maxTokens: 1000 }, { id: "claude-new", name: "New" }],
      } } } }""", env={"ANTHROPIC_API_KEY": "sk-ant"})
    provider = config.models.providers["anthropic"]
    assert provider.baseUrl == "http://127.0.0.1:9999"
    assert provider.api == "anthropic-messages"  # kept from the catalog
    assert provider.apiKey.get_secret_value() == "sk-ant"  # kept from the environment
    assert [m.id for m in provider.models] == [
        "claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-new"]
    sonnet = config.model("anthropic/claude-sonnet-4-5")
    assert sonnet.max_tokens == 1000 and sonnet.context_window == 200_000
    assert sonnet.name == "Claude Sonnet 4.5" and sonnet.vision
    assert config.model("anthropic/claude-new").name == "New"
    # The file defines a built-in only as an override: it still counts as the file's.
    assert config.default_selection().primary == "anthropic/claude-opus-4-5"


def test_unlisted_hosted_model_gets_default_metadata(tmp_path):
    config = load(tmp_path, '{ agents: { defaults: { model: "openai/o4-brand-new" } } }')
    m = config.model("openai/o4-brand-new")
    assert (m.api, m.base_url, m.context_window) == (
        "openai-responses", "https://api.openai.com/v1", 128_000)


# --------------------------------------------------------------------------- redaction


def test_redacted_hides_every_secret(tmp_path):
    config = load(tmp_path, """{
      models: { providers: { local: { baseUrl: "http://127.0.0.1/v1",
        apiKey: "sk-secret-2", headers: { Authorization: "Bearer sk-secret-3",
        "X-Trace": "token sk-secret-4", "X-Plain": "hello" }, models: [{ id: "m" }] } } },
      channels: { telegram: { botToken: "12345:AAsk-secret-5-abcdefghijklmnopqrstuvwxyz",
        apiRoot: "http://user:pw-secret-1@127.0.0.1:8081", webhookSecret: "sk-secret-6", webhookUrl: "https://h.example/12345:AAsk-secret-5-abcdefghijklmnopqrstuvwxyz" } },
    }""", env={"OPENAI_API_KEY": "sk-secret-7"})
    import json
    text = json.dumps(redacted(config))
    for i in range(1, 8):
        assert f"secret-{i}" not in text
    shown = redacted(config)
    assert shown["models"]["providers"]["local"]["headers"]["X-Plain"] == "hello"
    assert shown["channels"]["telegram"]["botToken"] == "[REDACTED]"
    assert shown["models"]["providers"]["anthropic"]["apiKey"] is None


# --------------------------------------------------------------------------- providers


def test_custom_provider_without_base_url_is_an_error(tmp_path):
    err = error_of(tmp_path, '{ models: { providers: { foo: { models: [{ id: "m" }] } } } }')
    assert "models.providers.foo.baseUrl: missing baseUrl: expected the server's URL" \
        in str(err)
    # A built-in provider has its URL from the catalog, unless the file replaces the catalog.
    config = load(tmp_path, '{ models: { providers: { anthropic: { apiKey: "k" } } } }')
    assert config.model("anthropic/claude-sonnet-4-5").base_url == "https://api.anthropic.com"
    err = error_of(tmp_path, '{ models: { mode: "replace", providers: { anthropic: '
                             '{ apiKey: "k", models: [{ id: "c" }] } } } }')
    assert "models.providers.anthropic.baseUrl: missing baseUrl" in str(err)


@pytest.mark.parametrize(("url", "expected"), [
    ("localhost:1234/v1", "expected an http:// or https:// URL with a host, got "
                          "'localhost:1234/v1'"),
    ("ftp://h/v1", "expected an http:// or https:// URL"),
    ("http://127.0.0.1:99999999/v1", "invalid port"),
    ("http:///v1", "expected an http:// or https:// URL with a host"),
])
def test_base_url_must_be_http_with_a_host(tmp_path, url, expected):
    err = error_of(tmp_path, f'{{ models: {{ providers: {{ foo: {{ baseUrl: "{url}", '
                             'models: [{ id: "m" }] } } } }')
    assert "models.providers.foo.baseUrl" in str(err) and expected in str(err)


def test_base_url_error_never_shows_credentials(tmp_path):
    err = error_of(tmp_path, '{ models: { providers: { foo: { baseUrl: '
                             '"ftp://u:pw-SECRET@h/v1?key=q-SECRET", models: [{ id: "m" }] } } } }')
    assert "SECRET" not in str(err) and "models.providers.foo.baseUrl" in str(err)


SECRETS_FILE = """{
  agents: { defaults: { model: "a/m", models: { "a/m": { alias: "M", params: {
    api_key: "sk-param-SECRET1", "Access-Token": "SECRET13tok",
    extra_headers: { Authorization: "Bearer SECRET2xyz", "X-Plain": "visible" },
    nested: { deeper: { password: "SECRET14pw", note: "plain words" } } } } },
    systemPrompt: "call https://x.example/hook?sig=SECRET15sig&v=1 with Bearer SECRET16brr" } },
  models: { providers: {
    a: { baseUrl: "http://h:1/v1", apiKey: "${MYKEY}",
      headers: { Authorization: "Bearer SECRET6", "api-key": "SECRET18azure" },
      models: [{ id: "m", headers: { "x-api-key": "SECRET8" } }] },
    anthropic: { apiKey: "sk-ant-SECRET9" } } },
  channels: { telegram: { botToken: "123456:SECRET10abcdefghijabcdefghijabcdef",
    apiRoot: "http://user:SECRET3pw@h:1/?key=SECRET4q&token=SECRET17t",
    webhookSecret: "SECRET11", mode: "webhook",
    webhookUrl: "https://h.example/hook/123456:SECRET10abcdefghijabcdefghijabcdef" } },
}"""


def test_config_show_hides_secrets_at_any_depth(tmp_path):
    import json
    config = load(tmp_path, SECRETS_FILE, env={"MYKEY": "SECRET0-from-env"})
    shown = redacted(config)
    text = json.dumps(shown)
    assert "SECRET" not in text, [line for line in json.dumps(shown, indent=1).splitlines()
                                  if "SECRET" in line]
    params = shown["agents"]["defaults"]["models"]["a/m"]["params"]
    assert params["api_key"] == "[REDACTED]" and params["Access-Token"] == "[REDACTED]"
    assert params["extra_headers"] == {"Authorization": "[REDACTED]", "X-Plain": "visible"}
    assert params["nested"]["deeper"]["password"] == "[REDACTED]"
    assert shown["channels"]["telegram"]["apiRoot"] == \
        "http://user:[REDACTED]@h:1/?key=[REDACTED]&token=[REDACTED]"
    assert "sig=[REDACTED]&v=1" in shown["agents"]["defaults"]["systemPrompt"]
    # Ordinary values stay readable.
    assert shown["agents"]["defaults"]["model"]["primary"] == "a/m"
    assert shown["models"]["providers"]["a"]["models"][0]["id"] == "m"


def test_config_secrets_lists_every_secret_for_log_redaction(tmp_path):
    from bridge.config.load import config_secrets
    config = load(tmp_path, SECRETS_FILE, env={"MYKEY": "SECRET0-from-env"})
    secrets = config_secrets(config)
    for expected in ("SECRET0-from-env", "sk-ant-SECRET9", "SECRET11", "SECRET8",
                     "Bearer SECRET6", "SECRET6", "SECRET18azure", "sk-param-SECRET1",
                     "SECRET2xyz", "SECRET3pw", "SECRET4q", "SECRET17t", "SECRET14pw",
                     "SECRET15sig", "123456:SECRET10abcdefghijabcdefghijabcdef"):
        assert expected in secrets, expected
    assert secrets == sorted(secrets, key=len, reverse=True)
    assert "visible" not in secrets and "a/m" not in secrets


def test_placeholder_key_equal_to_the_provider_id_is_not_blanked_everywhere(tmp_path):
    from bridge.config.load import config_secrets
    config = load(tmp_path, """{ models: { providers: { lmstudio: {
        baseUrl: "http://127.0.0.1:1234/v1", apiKey: "lmstudio", models: [{ id: "q" }] } } },
        agents: { defaults: { model: "lmstudio/q" } } }""")
    shown = redacted(config)
    assert shown["models"]["providers"]["lmstudio"]["apiKey"] == "[REDACTED]"
    assert shown["agents"]["defaults"]["model"]["primary"] == "lmstudio/q"
    assert "lmstudio" not in config_secrets(config)


@pytest.mark.parametrize(("body", "where", "var"), [
    # A hosted key variable used anywhere else is an ordinary variable.
    ('{ models: { providers: { local: { baseUrl: "http://h/v1", apiKey: "${OPENAI_API_KEY}",'
     ' models: [{ id: "m" }] } } } }', "models.providers.local.apiKey", "OPENAI_API_KEY"),
    ('{ models: { providers: { local: { baseUrl: "http://h/v1", models: [{ id: "m" }],'
     ' headers: { Authorization: "Bearer ${OPENROUTER_API_KEY}" } } } } }',
     "models.providers.local.headers.Authorization", "OPENROUTER_API_KEY"),
    ('{ dataDir: "/srv/${ANTHROPIC_API_KEY}" }', "dataDir", "ANTHROPIC_API_KEY"),
    # On a built-in provider, only its own variable is exempt.
    ('{ models: { providers: { openai: { apiKey: "${ANTHROPIC_API_KEY}" } } } }',
     "models.providers.openai.apiKey", "ANTHROPIC_API_KEY"),
    ('{ models: { providers: { openai: { apiKey: "${OPENAI_API_KEY}-${ORG_SUFFIX}" } } } }',
     "models.providers.openai.apiKey", "ORG_SUFFIX"),
])
def test_hosted_key_variable_is_exempt_only_as_its_providers_own_key(tmp_path, body, where,
                                                                      var):
    err = error_of(tmp_path, body)
    assert f"{where}: environment variable {var} is not set" in str(err)


def test_every_missing_variable_is_reported(tmp_path):
    err = error_of(tmp_path, '{ models: { providers: { a: { baseUrl: "http://${H}:${P}/v1",'
                             ' apiKey: "${OPENAI_API_KEY}", models: [{ id: "m" }] } } } }')
    text = str(err)
    for var in ("H", "P", "OPENAI_API_KEY"):
        assert f"environment variable {var} is not set" in text
    assert len(err.problems) == 3


@pytest.mark.parametrize(("url", "expected"), [
    ("http://user:pw@127.0.0.1:1234/v1", "credentials in baseUrl are not supported"),
    ("http://127.0.0.1:1234/v1?api-version=1", "without ?query or #fragment"),
    ("http://127.0.0.1:1234/v1#x", "without ?query or #fragment"),
])
def test_base_url_with_credentials_or_query_is_refused(tmp_path, url, expected):
    # Both used to validate and then fail every call (aiohttp refuses URL credentials
    # beside an Authorization header; the API path was appended after the query).
    err = error_of(tmp_path, f'{{ models: {{ providers: {{ foo: {{ baseUrl: "{url}", '
                             'models: [{ id: "m" }] } } } }')
    assert "models.providers.foo.baseUrl" in str(err) and expected in str(err)
    assert "pw@" not in str(err)


def test_config_error_keeps_its_words_after_a_key_name(tmp_path):
    from bridge.secrets import redact

    err = error_of(tmp_path, '{ channels: { telegram: { botToken: "not-a-token" } } }')
    text = redact(str(err))
    assert "botToken: does not look like a bot token" in text
    assert "[REDACTED] not look" not in text
