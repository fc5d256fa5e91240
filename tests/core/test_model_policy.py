"""agents.defaults.modelPolicy: which models /model may choose for senders who are not
owners, and what /models shows them.  Default: the models the config itself names;
``allow`` (refs, aliases, globs) widens or narrows it; owners are not bound."""

from __future__ import annotations

from bridge.model_policy import choosable_refs, may_choose, named_refs
from tests.core.helpers import dm, group, make_config

OWNER = "8"
USER = "42"
NOT_YOURS = "is not one of the models you can choose here"

PROVIDERS = {"mode": "replace", "providers": {
    "local": {"baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions",
              "models": [{"id": "small", "contextWindow": 32000, "maxTokens": 1000},
                         {"id": "big", "contextWindow": 64000, "maxTokens": 1000},
                         {"id": "hidden", "contextWindow": 32000, "maxTokens": 1000},
                         {"id": "grouponly", "contextWindow": 32000, "maxTokens": 1000}]},
    "backup": {"baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions",
               "models": [{"id": "m", "contextWindow": 32000, "maxTokens": 1000},
                          {"id": "spare", "contextWindow": 32000, "maxTokens": 1000}]},
}}


def _config(tmp_path, allow=None):
    defaults = {"model": {"primary": "local/small", "fallbacks": ["backup/m"]},
                "models": {"local/big": {"alias": "Big"}, "backup/m": {"alias": "Backup"}}}
    if allow is not None:
        defaults["modelPolicy"] = {"allow": allow}
    return make_config(tmp_path, models=PROVIDERS, agents={"defaults": defaults}, channels={
        "telegram": {"dmPolicy": "open", "allowFrom": ["*"], "owners": [OWNER],
                     "groupPolicy": "open",
                     "groups": {"-100": {"model": "local/grouponly"}, "*": {}}}})


async def _last(harness, inbound) -> str:
    await harness.say(inbound)
    return harness.channel.texts()[-1]


def test_the_default_policy_is_what_the_config_names(tmp_path):
    config = _config(tmp_path)
    assert set(named_refs(config)) == {"local/small", "backup/m", "local/big",
                                       "local/grouponly"}
    assert may_choose(config, "local/grouponly")  # a per-chat entry names it
    assert not may_choose(config, "local/hidden")  # listed, but named nowhere
    assert may_choose(config, "local/hidden", owner=True)
    assert "local/hidden" not in choosable_refs(config)
    assert "local/hidden" in choosable_refs(config, owner=True)


async def test_model_refuses_an_unnamed_model_to_a_user_not_to_an_owner(harness):
    harness.config = _config(harness.tmp_path)
    await harness.start()
    assert NOT_YOURS in await _last(harness, dm("/model local/hidden", sender=USER))
    await harness.say(dm("hi", sender=USER))
    assert harness.router.calls[-1].candidates[0] == "local/small"  # nothing changed
    assert "now uses Big (local/big)" in await _last(harness, dm("/model local/big",
                                                                 sender=USER))
    assert "now uses local/hidden" in await _last(harness, dm("/model local/hidden",
                                                             sender=OWNER))
    await harness.say(dm("hi", sender=OWNER))
    assert harness.router.calls[-1].candidates[0] == "local/hidden"


async def test_models_shows_only_what_the_asker_may_choose(harness):
    harness.config = _config(harness.tmp_path)
    await harness.start()
    users = await _last(harness, dm("/models", sender=USER))
    assert "local/big (alias Big)" in users and "local/grouponly" in users
    assert "local/hidden" not in users and "backup/spare" not in users
    owners = await _last(harness, dm("/models", sender=OWNER))
    assert "local/hidden" in owners and "backup/spare" in owners
    shown = await _last(harness, dm("/model", sender=USER))
    assert "local/hidden" not in shown and "Big (local/big)" in shown


async def test_allow_globs_widen_and_narrow(harness):
    harness.config = _config(harness.tmp_path, allow=["local/*"])
    await harness.start()
    assert "now uses local/hidden" in await _last(harness, dm("/model local/hidden",
                                                             sender=USER))
    assert NOT_YOURS in await _last(harness, dm("/model Backup", sender=USER))
    users = await _last(harness, dm("/models", sender=USER))
    assert "local/hidden" in users and "backup/m" not in users
    assert "Also any model matching: local/*" in users
    # Owners are not bound by it.
    assert "now uses Backup" in await _last(harness, dm("/model Backup", sender=OWNER))


async def test_allow_by_alias_and_ref(harness):
    harness.config = _config(harness.tmp_path, allow=["Backup", "local/small"])
    await harness.start()
    assert "now uses Backup" in await _last(harness, dm("/model backup", sender=USER))
    assert NOT_YOURS in await _last(harness, dm("/model Big", sender=USER))
    assert NOT_YOURS in await _last(harness, group("/model local/grouponly", sender=USER))
    users = await _last(harness, dm("/models", sender=USER))
    assert "backup/m" in users and "local/small" in users and "local/big" not in users
    # Going back to the configured model is always possible.
    assert "configured model again" in await _last(harness, dm("/model default",
                                                              sender=USER))


async def test_an_empty_allow_list_lets_users_choose_nothing(harness):
    harness.config = _config(harness.tmp_path, allow=[])
    await harness.start()
    assert NOT_YOURS in await _last(harness, dm("/model local/small", sender=USER))
    assert "no models you can choose" in await _last(harness, dm("/models", sender=USER))


def test_transcription_and_speech_models_are_never_chat_choices(tmp_path):
    providers = {"mode": "replace", "providers": {
        "local": {"baseUrl": "http://127.0.0.1:9/v1", "api": "openai-completions",
                  "models": [{"id": "small"},
                             {"id": "whisper-1", "kind": "transcription"},
                             {"id": "tts-1", "kind": "speech"}]}}}
    config = make_config(tmp_path, models=providers, agents={"defaults": {
        "model": "local/small", "models": {"local/whisper-1": {"alias": "Ears"}},
        "modelPolicy": {"allow": ["local/*"]}}})
    assert choosable_refs(config, owner=True) == ["local/small"]
    assert choosable_refs(config) == ["local/small"]
    for ref in ("local/whisper-1", "local/tts-1"):
        assert not may_choose(config, ref, owner=True)
        assert not may_choose(config, ref)
    from bridge.models.doctor import _refs_in_use

    assert _refs_in_use(config) == ["local/small"]  # doctor sends them no chat probe
