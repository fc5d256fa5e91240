"""Refs, aliases, the implicit default model and per-channel / per-chat precedence."""

from __future__ import annotations

import pytest

from bridge.config.load import load_config_text
from bridge.config.resolve import UnknownModelError, split_ref
from bridge.config.schema import Config

PROVIDERS = """
  models: { providers: {
    lmstudio: { baseUrl: "http://127.0.0.1:1234/v1", api: "openai-responses",
      models: [{ id: "qwen" }, { id: "llama" }] },
    ollama: { baseUrl: "http://127.0.0.1:11434/v1", models: [{ id: "gemma3:4b" }] },
  } },
"""


def cfg(body: str = "", env: dict[str, str] | None = None) -> Config:
    return load_config_text("{" + PROVIDERS + body + "}", file="t.json5", env=env or {})


def test_split_at_the_first_slash():
    assert split_ref("openrouter/minimax/minimax-m2.1") == ("openrouter", "minimax/minimax-m2.1")
    with pytest.raises(KeyError):
        split_ref("no-slash")
    config = cfg()
    m = config.model("openrouter/minimax/minimax-m2.1")
    assert (m.provider, m.model_id, m.api) == ("openrouter", "minimax/minimax-m2.1",
                                              "openai-completions")
    assert m.context_window == 196_608  # catalog metadata, not the default


def test_alias_resolution_is_case_insensitive():
    config = cfg('agents: { defaults: { models: { "ollama/gemma3:4b": { alias: "Gemma" } } } },')
    for text in ("Gemma", "gemma", "GEMMA", "  gemma "):
        assert config.resolve_ref(text) == "ollama/gemma3:4b"
    assert config.model("gemma").alias == "Gemma"
    with pytest.raises(UnknownModelError, match="did you mean 'Gemma'"):
        config.resolve_ref("gema")
    assert isinstance(UnknownModelError("x"), KeyError)
    assert str(UnknownModelError("readable")) == "readable"


def test_custom_provider_without_api_is_chat_completions():
    assert cfg().model("ollama/gemma3:4b").api == "openai-completions"
    assert cfg().model("lmstudio/qwen").api == "openai-responses"


def test_default_primary_is_first_model_of_first_file_provider():
    config = cfg(env={"ANTHROPIC_API_KEY": "k"})
    assert config.default_selection().primary == "lmstudio/qwen"
    # fallbacks without a primary keep the implicit primary
    config = cfg('agents: { defaults: { model: { fallbacks: ["ollama/gemma3:4b"] } } },')
    sel = config.default_selection()
    assert config.candidates(sel) == ["lmstudio/qwen", "ollama/gemma3:4b"]


def test_default_primary_skips_builtins_the_file_does_not_define():
    config = load_config_text("{}", env={"ANTHROPIC_API_KEY": "k"})
    assert config.default_selection().primary is None
    # A Config built in code (no file) counts every provider as its own.
    built = Config.model_validate({"models": {"providers": {"x": {"models": [{"id": "m"}]}}}})
    assert built.default_selection().primary == "x/m"


def test_candidates_drop_duplicates_and_keep_order():
    config = cfg('agents: { defaults: { models: { "lmstudio/llama": { alias: "L" } } } },')
    from bridge.config.schema import ModelSelection
    sel = ModelSelection(primary="L", fallbacks=("lmstudio/qwen", "lmstudio/llama"))
    assert config.candidates(sel) == ["lmstudio/llama", "lmstudio/qwen"]


PRECEDENCE = """
  agents: { defaults: { model: "lmstudio/qwen", systemPrompt: "default prompt" } },
  channels: {
    telegram: {
      model: "lmstudio/llama",
      systemPrompt: "telegram prompt",
      groups: {
        "-100": { model: "ollama/gemma3:4b", topics: { "7": { model: "openai/gpt-5.1" },
                                                      "8": { systemPrompt: "topic 8" } } },
        "*": { model: "openai/gpt-5-mini" },
      },
      direct: { "42": { model: { primary: "anthropic/claude-haiku-4-5", fallbacks: ["lmstudio/qwen"] } },
                "*": { systemPrompt: "any dm" } },
    },
  },
"""


@pytest.mark.parametrize(("kind", "chat", "sender", "thread", "expected"), [
    ("group", "-100", "1", "7", ["openai/gpt-5.1"]),              # topic
    ("group", "-100", "1", "8", ["ollama/gemma3:4b"]),            # topic without model -> group
    ("group", "-100", "1", None, ["ollama/gemma3:4b"]),           # group
    ("group", "-555", "1", None, ["openai/gpt-5-mini"]),          # "*" group
    ("direct", "42", "42", None, ["anthropic/claude-haiku-4-5", "lmstudio/qwen"]),  # direct
    ("direct", "43", "43", None, ["lmstudio/llama"]),             # channel
])
def test_precedence_topic_group_direct_channel(kind, chat, sender, thread, expected):
    config = cfg(PRECEDENCE)
    sel = config.selection_for("telegram", chat_kind=kind, chat_id=chat,
                               sender_id=sender, thread_id=thread)
    assert config.candidates(sel) == expected


def test_precedence_falls_back_to_agents_defaults():
    config = cfg(PRECEDENCE)
    for channel in ("whatsapp", "console", "nonexistent"):
        sel = config.selection_for(channel, chat_kind="direct", chat_id="1")
        assert config.candidates(sel) == ["lmstudio/qwen"]


def test_system_prompt_precedence():
    config = cfg(PRECEDENCE)
    prompt = lambda **kw: config.system_prompt_for("telegram", **kw)  # noqa: E731
    assert prompt(chat_kind="group", chat_id="-100", thread_id="8") == "topic 8"
    assert prompt(chat_kind="group", chat_id="-100") == "telegram prompt"
    assert prompt(chat_kind="direct", chat_id="9", sender_id="9") == "any dm"
    assert config.system_prompt_for("whatsapp", chat_kind="direct", chat_id="1") == "default prompt"


def test_resolve_candidates_keeps_an_unknown_ref_for_the_router():
    from bridge.config.resolve import ResolvedModel, resolve_candidates

    out = resolve_candidates(cfg(), ["lmstudio/qwen", "nosuch/x", "ollama/gemma3:4b"])
    assert isinstance(out[0], ResolvedModel) and out[0].ref == "lmstudio/qwen"
    assert out[1] == "nosuch/x"  # the router records it as not_found
    assert isinstance(out[2], ResolvedModel) and out[2].api == "openai-completions"


def test_unknown_model_is_an_unknown_model_error():
    with pytest.raises(UnknownModelError, match="unknown provider 'nosuch'"):
        cfg().model("nosuch/x")
    with pytest.raises(UnknownModelError, match="unknown alias"):
        cfg().resolve_ref("gema")


def test_resolution_imports_the_schema_for_types_only():
    """schema.py imports resolve.py; resolve.py must not import it back at run time."""
    import ast
    import inspect

    import bridge.config.resolve as resolve

    runtime: list[str] = []

    def walk(nodes, guarded: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                walk(node.body, True)
                walk(node.orelse, guarded)
            elif isinstance(node, ast.ImportFrom) and not guarded:
                runtime.append(node.module or "")
            elif isinstance(node, ast.Import) and not guarded:
                runtime.extend(alias.name for alias in node.names)
            else:
                walk(ast.iter_child_nodes(node), guarded)

    walk(ast.parse(inspect.getsource(resolve)).body, False)
    assert "bridge.config.schema" not in runtime
    from bridge.config import schema

    assert schema.ResolvedModel is resolve.ResolvedModel  # the old import path still works
