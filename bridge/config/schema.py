"""The configuration tree (pydantic, frozen).

The ``models`` and ``agents`` sections follow OpenClaw's schema so configs written for it
work here.  Keys are camelCase on disk and in attributes alike.  Loading (JSON5, ``${ENV}``,
merging the built-in catalog, error messages with file and dotted path) is in ``load.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

# One direction: resolution reads this tree and imports it for types only.  ResolvedModel
# lives there and stays importable from here.
from bridge.config import resolve
from bridge.config.resolve import ResolvedModel
from bridge.secrets import BOT_TOKEN_RE

Api = Literal["openai-responses", "openai-completions", "anthropic-messages"]
InputKind = Literal["text", "image"]
DmPolicy = Literal["pairing", "allowlist", "open", "disabled"]
GroupPolicy = Literal["allowlist", "open", "disabled"]
ReplyWithVoice = Literal["never", "whenVoice", "always"]
ModelKind = Literal["chat", "transcription", "speech"]
# "auto": a reply may start inside reasoning whose opening tag the chat template wrote
# (a lone ``</think>``), so streamed text is held until that is ruled out; "paired": the
# model only ever writes paired tags, so text streams at once (issue 17).
ThinkTags = Literal["auto", "paired"]
Streaming = Literal["off", "draft", "edit"]
AckScope = Literal["direct", "group-mentions", "all"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- models


class Cost(_Model):
    input: float = 0
    output: float = 0
    cacheRead: float = 0
    cacheWrite: float = 0


class ModelDef(_Model):
    id: str = Field(min_length=1)
    name: str | None = None
    reasoning: bool = False
    input: tuple[InputKind, ...] = ("text",)
    cost: Cost = Cost()
    contextWindow: int = Field(default=128_000, gt=0)
    maxTokens: int = Field(default=8192, gt=0)
    headers: dict[str, str] = {}
    thinkTags: ThinkTags | None = None  # None: the provider's
    # False: never preview this model's streamed text (servers that relabel streamed
    # answer text as reasoning at the end, e.g. LocalAI); None: the provider's.
    preview: bool | None = None
    # What the model does: "chat" models answer turns; "transcription" (speech to text)
    # and "speech" (text to speech) models serve voice notes and are never offered as
    # chat models (/models, doctor, discovery).
    kind: ModelKind = "chat"


class Timeouts(_Model):
    """Explicit timeouts for one model call, in seconds."""

    connectSeconds: float = Field(default=5, gt=0)
    # A cold-loading local model hangs here; keep it short enough to fail over.
    firstTokenSeconds: float = Field(default=60, gt=0)
    idleSeconds: float = Field(default=60, gt=0)  # longest gap between stream chunks
    totalSeconds: float = Field(default=300, gt=0)


class Budget(_Model):
    """Spending caps for one provider, in USD (from the models' ``cost``).  Reached: the
    router skips the provider's models (``budget_exhausted``) until the period turns."""

    dailyUsd: float | None = Field(default=None, gt=0)
    monthlyUsd: float | None = Field(default=None, gt=0)


class ProviderDef(_Model):
    baseUrl: str | None = None
    apiKey: SecretStr | None = None
    api: Api | None = None
    headers: dict[str, str] = {}
    timeoutSeconds: float | None = Field(default=None, gt=0)  # total; overrides timeouts
    timeouts: Timeouts | None = None
    models: tuple[ModelDef, ...] = ()
    budget: Budget | None = None
    thinkTags: ThinkTags = "auto"
    preview: bool = True

    @property
    def effective_api(self) -> Api:
        # A custom provider with a baseUrl and no api speaks Chat Completions.
        return self.api or "openai-completions"

    def model_def(self, model_id: str) -> ModelDef:
        """The listed definition of ``model_id``, or defaults for one it does not list."""
        return next((m for m in self.models if m.id == model_id), None) or ModelDef(id=model_id)

    def effective_timeouts(self, defaults: Timeouts) -> Timeouts:
        """``timeouts`` (else ``defaults``), with ``timeoutSeconds`` as the total if set."""
        timeouts = self.timeouts or defaults
        if self.timeoutSeconds is not None:
            timeouts = Timeouts(**{**timeouts.model_dump(), "totalSeconds": self.timeoutSeconds})
        return timeouts


class ModelsSection(_Model):
    mode: Literal["merge", "replace"] = "merge"
    providers: dict[str, ProviderDef] = {}


# --------------------------------------------------------------------------- agents


class ModelSelection(_Model):
    """``"provider/model"`` or ``{primary, fallbacks}``."""

    primary: str | None = None
    fallbacks: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"primary": value}
        if not isinstance(value, dict | ModelSelection):
            raise ValueError('expected a model ref string or {primary, fallbacks}')
        return value


class AgentModelEntry(_Model):
    alias: str | None = None
    params: dict[str, Any] = {}


class ModelPolicy(_Model):
    """Which models ``/model`` may choose for senders who are not owners.

    ``allow`` holds refs, aliases or glob patterns (``"lmstudio/*"``).  None: the models
    the config itself names (defaults, fallbacks, aliases, per-chat entries).
    """

    allow: tuple[str, ...] | None = None


class LimitValues(_Model):
    """One set of caps; None (absent) means no cap of that kind."""

    messagesPerMinute: int | None = Field(default=None, ge=1)
    messagesPerHour: int | None = Field(default=None, ge=1)
    tokensPerDay: int | None = Field(default=None, ge=1)
    costPerDayUsd: float | None = Field(default=None, gt=0)
    costPerMonthUsd: float | None = Field(default=None, gt=0)


class Limits(LimitValues):
    """Caps per chat (the fields) and per sender within a chat (``perSender``).

    Set at the default, channel, group, topic and direct levels; the most specific level
    that sets ``limits`` wins, as for ``model``.  Owners are never limited.
    """

    perSender: LimitValues | None = None


class Compaction(_Model):
    enabled: bool = True
    model: str | None = None  # default: the session's own model
    keepRecentTurns: int = Field(default=6, ge=1)


class Transcription(_Model):
    """Voice notes to text (``agents.defaults.transcription``)."""

    model: ModelSelection | None = None  # None: voice notes are not transcribed
    language: str | None = Field(default=None, min_length=2, max_length=8)  # ISO-639-1 hint
    echoTranscript: bool = False  # the reply starts with the transcript, quoted


class Speech(_Model):
    """Spoken replies (``agents.defaults.speech``)."""

    model: ModelSelection | None = None  # None: never spoken
    voice: str = Field(default="alloy", min_length=1)
    replyWithVoice: ReplyWithVoice = "never"
    maxChars: int = Field(default=1000, ge=50, le=4096)  # spoken; the whole text follows
    speed: float | None = Field(default=None, ge=0.25, le=4.0)


class AgentDefaults(_Model):
    model: ModelSelection | None = None
    models: dict[str, AgentModelEntry] = {}
    systemPrompt: str | None = None
    compaction: Compaction = Compaction()
    timeouts: Timeouts = Timeouts()
    imageHistoryTurns: int = Field(default=3, ge=0)
    imageMaxDimensionPx: int = Field(default=1568, gt=0)
    imageMaxBytes: int = Field(default=5 * 1024 * 1024, gt=0)
    imageMaxPixels: int = Field(default=50_000_000, gt=0)
    imageRoots: tuple[str, ...] = ()
    # Bounded wait for running turns on shutdown.
    shutdownGraceSeconds: float = Field(default=20, ge=0)
    # Model turns running at once across all chats (0: no limit); commands are not limited.
    maxConcurrentTurns: int = Field(default=4, ge=0)
    modelPolicy: ModelPolicy = ModelPolicy()
    limits: Limits | None = None
    transcription: Transcription = Transcription()
    speech: Speech = Speech()


class Agents(_Model):
    defaults: AgentDefaults = AgentDefaults()


# --------------------------------------------------------------------------- channels


class ChatConfig(_Model):
    """Per-chat overrides (``direct.<peerId>``; groups add requireMention and topics)."""

    model: ModelSelection | None = None
    systemPrompt: str | None = None
    enabled: bool = True
    limits: Limits | None = None
    # Live replies (issue 17); None: inherit from the next level up.
    streaming: Streaming | None = None
    streamingIntervalMs: int | None = Field(default=None, ge=250, le=60_000)
    ackReaction: str | None = None  # "" turns it off
    ackFailureReaction: str | None = None


_NO_WHATSAPP_PREVIEWS = 'WhatsApp has no live previews; use "off" or leave it out'


def _no_group_drafts(value: Streaming | None) -> Streaming | None:
    # Telegram shows drafts in private chats only (TEXTDRAFT_PEER_INVALID elsewhere).
    if value == "draft":
        raise ValueError('"draft" previews work in direct chats only; use "edit" or "off"')
    return value


class TopicConfig(ChatConfig):
    requireMention: bool | None = None
    transcribeForMentions: bool | None = None  # None: the group's
    groupContextMessages: int | None = Field(default=None, ge=0, le=200)  # None: the group's

    _streaming = field_validator("streaming")(_no_group_drafts)


class GroupConfig(ChatConfig):
    requireMention: bool = True
    allowFrom: tuple[str, ...] | None = None  # senders allowed in this group (None: anyone)
    topics: dict[str, TopicConfig] = {}  # Telegram forum topics by thread id
    # requireMention: a voice note is transcribed before the mention check, and one that
    # says the bot's name counts as a mention.
    transcribeForMentions: bool = False
    # Unaddressed messages since the bot's last answer sent along as context (0: off).
    # None: the "*" group's, else 20.
    groupContextMessages: int | None = Field(default=None, ge=0, le=200)

    _streaming = field_validator("streaming")(_no_group_drafts)


class ChannelConfig(_Model):
    enabled: bool = True
    dmPolicy: DmPolicy = "pairing"
    allowFrom: tuple[str, ...] = ()
    # The operators on this channel (ids, as in allowFrom): owner commands, no limits.
    owners: tuple[str, ...] = ()
    groupPolicy: GroupPolicy = "allowlist"
    groups: dict[str, GroupConfig] = {}  # chat id or "*"
    direct: dict[str, ChatConfig] = {}  # peer id
    model: ModelSelection | None = None
    systemPrompt: str | None = None
    limits: Limits | None = None
    textChunkLimit: int = Field(default=4000, ge=200)
    # Sends one reply may take (chunks of textChunkLimit); beyond, the last one says so
    # and carries the rest as a document where the platform has one.  0: no cap.
    maxReplyChunks: int = Field(default=10, ge=0, le=1000)
    mediaMaxMb: float = Field(default=20, gt=0)
    # Longer voice notes, audio and round video notes are not downloaded (nor transcribed).
    audioMaxSeconds: float = Field(default=300, gt=0)
    # Live replies (issue 17).  streaming None: "draft" in direct chats, "off" in groups.
    streaming: Streaming | None = None
    streamingIntervalMs: int = Field(default=1000, ge=250, le=60_000)
    ackReaction: str = "\U0001F440"  # eyes; "" turns acknowledgements off
    ackFailureReaction: str = "\U0001F622"  # crying face, when every model failed
    ackReactionScope: AckScope = "all"
    # Messages of one sender arriving within this window are answered in one turn.
    debounceMs: int = Field(default=0, ge=0, le=60_000)

    @model_validator(mode="after")
    def _open_needs_wildcard(self) -> ChannelConfig:
        if self.dmPolicy == "open" and "*" not in self.allowFrom:
            raise ValueError('dmPolicy "open" requires allowFrom to contain "*"')
        return self


class TelegramConfig(ChannelConfig):
    botToken: SecretStr | None = None  # else tokenFile, else $TELEGRAM_BOT_TOKEN
    tokenFile: str | None = None
    apiRoot: str = "https://api.telegram.org"
    mode: Literal["polling", "webhook"] = "polling"
    webhookUrl: str | None = None
    webhookSecret: SecretStr | None = None
    webhookPath: str = "/telegram/webhook"
    webhookHost: str = "127.0.0.1"
    webhookPort: int = Field(default=8443, gt=0, lt=65536)
    textChunkLimit: int = Field(default=4000, ge=200, le=4096)
    mediaMaxMb: float = Field(default=20, gt=0)

    @field_validator("botToken")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never repeats the token.
        if value is not None and not BOT_TOKEN_RE.match(value.get_secret_value()):
            raise ValueError("does not look like a bot token from BotFather (<digits>:<secret>)")
        return value

    @field_validator("webhookSecret")
    @classmethod
    def _secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram's secret_token rule; setWebhook answers 400 otherwise.  Never echoed.
        secret = value.get_secret_value() if value is not None else "x"
        if not (1 <= len(secret) <= 256
                and all(c.isascii() and (c.isalnum() or c in "_-") for c in secret)):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _webhook_needs_url_and_secret(self) -> TelegramConfig:
        if self.mode == "webhook" and not (self.webhookUrl and self.webhookSecret):
            raise ValueError('mode "webhook" requires webhookUrl and webhookSecret')
        return self


class WhatsAppConfig(ChannelConfig):
    sendReadReceipts: bool = True
    mediaMaxMb: float = Field(default=50, gt=0)
    catchUpMinutes: float = Field(default=10, ge=0)
    # Go "available" around a reply so "typing…" shows; while available the operator's
    # phone gets no push notifications, so it is off unless asked for.
    typingPresence: bool = False

    @field_validator("streaming")
    @classmethod
    def _no_previews(cls, value: Streaming | None) -> Streaming | None:
        if value not in (None, "off"):
            raise ValueError(_NO_WHATSAPP_PREVIEWS)
        return value

    @model_validator(mode="after")
    def _no_previews_per_chat(self) -> WhatsAppConfig:
        # The same rule on every group, topic and direct entry, each error at its path.
        errors: list[InitErrorDetails] = []

        def check(block: ChatConfig, *loc: str) -> None:
            if block.streaming not in (None, "off"):
                errors.append(InitErrorDetails(
                    type=PydanticCustomError("value_error", _NO_WHATSAPP_PREVIEWS),
                    loc=(*loc, "streaming"), input=block.streaming))

        for gid, group in self.groups.items():
            check(group, "groups", gid)
            for tid, topic in group.topics.items():
                check(topic, "groups", gid, "topics", tid)
        for peer, entry in self.direct.items():
            check(entry, "direct", peer)
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


class ConsoleConfig(_Model):
    enabled: bool = False  # ``palaver chat`` always runs it; ``run`` only when enabled
    model: ModelSelection | None = None
    systemPrompt: str | None = None


class Channels(_Model):
    telegram: TelegramConfig | None = None
    whatsapp: WhatsAppConfig | None = None
    console: ConsoleConfig | None = None
    # OpenClaw's per-chat pins: channel -> chat id (a topic: "<id>:topic:<thread>") -> a
    # model ref/alias or {primary, fallbacks}.  Same level as the chat's groups/direct/
    # topics entry (that entry's own model wins when both set one).
    modelByChannel: dict[str, dict[str, ModelSelection]] = {}

    @field_validator("modelByChannel")
    @classmethod
    def _known_channels(cls, value: dict[str, dict[str, ModelSelection]]
                        ) -> dict[str, dict[str, ModelSelection]]:
        known = [n for n in cls.model_fields if n != "modelByChannel"]
        for name in value:
            if name not in known:
                raise ValueError(f"unknown channel {name!r} in modelByChannel "
                                 f"(expected one of: {', '.join(known)})")
        return value


# --------------------------------------------------------------------------- operations


class HealthConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8787, gt=0, lt=65536)


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` binds the loopback interface only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    h = host.strip().strip("[]").lower()
    if h in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


class WebConsoleConfig(_Model):
    """The web operator console served by ``palaver run`` (not ``channels.console``, the
    terminal chat)."""

    enabled: bool = True
    # Declared before ``host`` so the host's check can read it.
    allowRemote: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8788, gt=0, lt=65536)

    @field_validator("host")
    @classmethod
    def _loopback_unless_allowed(cls, v: str, info: Any) -> str:
        if not v.strip():
            raise ValueError("console.host must not be empty")
        if not is_loopback_host(v) and not info.data.get("allowRemote", False):
            raise ValueError(
                f"{v!r} is not a loopback address; the console lets its user change the "
                "config, so serving it beyond this machine needs console.allowRemote: true "
                "(and TLS in front of it)")
        return v


class StoreConfig(_Model):
    # Refused and ignored traffic (strangers, unmentioned group messages) is kept this
    # many days (without its text), then pruned.
    retentionDays: int = Field(default=30, ge=1)
    # postgresql://... selects PostgreSQL (issue 20); None: $PALAVER_DATABASE_URL, else
    # SQLite in dataDir.  The password is a secret (never logged).
    url: SecretStr | None = None
    # A process that stops renewing its claims for this long is taken over.
    leaseSeconds: float = Field(default=30, ge=2, le=3600)
    poolSize: int = Field(default=10, ge=2, le=100)


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    logMessageText: bool = False


# --------------------------------------------------------------------------- root


class Config(_Model):
    """The whole configuration; read attributes, never dict keys."""

    dataDir: str = "~/.palaver"
    models: ModelsSection = ModelsSection()
    agents: Agents = Agents()
    channels: Channels = Channels()
    health: HealthConfig = HealthConfig()
    console: WebConsoleConfig = WebConsoleConfig()
    logging: LoggingConfig = LoggingConfig()
    store: StoreConfig = StoreConfig()

    # Provider ids the config FILE defined (set by ``load_config``; built-ins merged from the
    # catalog are not in it).  None: unknown (built in code), every provider counts.
    _file_provider_ids: frozenset[str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _voice_models_resolve(self) -> Config:
        problems = resolve.voice_ref_problems(self)
        if problems:
            raise ValidationError.from_exception_data("Config", [
                InitErrorDetails(type=PydanticCustomError("value_error", message),
                                 loc=loc, input=text)
                for loc, text, message in problems])
        return self

    @field_validator("dataDir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("dataDir must not be empty")
        return v

    @property
    def data_dir(self) -> Path:
        return Path(self.dataDir).expanduser()

    # -- model references ----------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        """alias -> canonical ref."""
        return {
            entry.alias: ref
            for ref, entry in self.agents.defaults.models.items()
            if entry.alias
        }

    def resolve_ref(self, text: str) -> str:
        """Turn an alias or ``provider/model`` into a canonical ref.

        Raises :class:`~bridge.config.resolve.UnknownModelError` (a KeyError) if unknown.
        """
        return resolve.resolve_ref(self, text)

    def model(self, ref_or_alias: str) -> ResolvedModel:
        """Everything needed to call ``ref_or_alias``.

        Raises :class:`~bridge.config.resolve.UnknownModelError` (a KeyError) if unknown.
        """
        return resolve.resolve_model(self, ref_or_alias)

    def default_selection(self) -> ModelSelection:
        """agents.defaults.model, else the first model of the first provider the FILE defines.

        Built-in catalog providers never become the implicit primary; with none in the file
        the primary stays None (the conversation core then discovers a local model).
        """
        chosen = self.agents.defaults.model
        if chosen is not None and chosen.primary:
            return chosen
        ids = self._file_provider_ids
        from_file = frozenset(self.models.providers) if ids is None else ids
        for provider_id, provider in self.models.providers.items():
            if provider_id not in from_file:
                continue
            chat = [m for m in provider.models if m.kind == "chat"]
            if chat:
                fallbacks = chosen.fallbacks if chosen else ()
                return ModelSelection(primary=f"{provider_id}/{chat[0].id}",
                                      fallbacks=fallbacks)
        return chosen or ModelSelection()

    def selection_for(
        self,
        channel: str,
        *,
        chat_kind: str,
        chat_id: str,
        sender_id: str | None = None,
        thread_id: str | None = None,
    ) -> ModelSelection:
        """Config precedence (most specific first): topic, group/direct, channel, defaults.

        A chat's own ``/model`` choice (stored, not in config) outranks all of these; the
        conversation core applies it.
        """
        return resolve.selection_for(
            self, channel, chat_kind=chat_kind, chat_id=chat_id,
            sender_id=sender_id, thread_id=thread_id,
        )

    def candidates(self, selection: ModelSelection) -> list[str]:
        """Canonical refs: primary then fallbacks, in order, without duplicates.

        Raises :class:`~bridge.config.resolve.UnknownModelError` if one does not resolve.
        """
        return resolve.candidates(self, selection)

    def system_prompt_for(
        self,
        channel: str,
        *,
        chat_kind: str,
        chat_id: str,
        sender_id: str | None = None,
        thread_id: str | None = None,
    ) -> str | None:
        """The most specific configured system prompt (same precedence as models)."""
        return resolve.system_prompt_for(
            self, channel, chat_kind=chat_kind, chat_id=chat_id,
            sender_id=sender_id, thread_id=thread_id,
        )

    def channel(self, name: str) -> ChannelConfig | ConsoleConfig | None:
        return getattr(self.channels, name, None)
