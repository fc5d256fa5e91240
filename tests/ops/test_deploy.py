"""deploy/: what can be checked without Docker or systemd running.

The compose file, the Dockerfile, the systemd unit and the config they mount must parse,
validate and agree with each other and with the code's defaults (paths, ports, commands).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from bridge.cli import build_parser
from bridge.config.load import CONFIG_ENV, ConfigError, load_config
from bridge.config.schema import AgentDefaults, Config, HealthConfig
from bridge.health import HEALTH_PATH, HealthServer
from bridge.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG_IN_CONTAINER = "/etc/palaver/palaver.json5"
FAKE_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ"


# --------------------------------------------------------------------------- parsers


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit: section -> key -> every value (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"line {number}: expected Key=Value, got {line!r}"
        assert not value.rstrip().endswith("\\"), f"line {number}: continuation not expected"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions((DEPLOY / "Dockerfile").read_text())


def last(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in instructions if kw == keyword]
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def runtime_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    return instructions[starts[-1]:]


def docker_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for kw, args in runtime_stage(instructions):
        if kw == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def healthcheck_command(instructions: list[tuple[str, str]]) -> list[str]:
    args = last(instructions, "HEALTHCHECK")
    _, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    return json.loads(command)


def healthcheck_url(instructions: list[tuple[str, str]]) -> str:
    command = healthcheck_command(instructions)
    m = re.search(r"https?://[^'\"\s]+", " ".join(command))
    assert m, f"no URL in the HEALTHCHECK: {command}"
    return m.group(0)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


class ComposeError(Exception):
    """What `docker compose` would refuse: a required variable is unset (``${X:?msg}``)."""


_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])"
    r"(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def compose_interpolate(text: str, shell: dict[str, str]) -> str:
    """Compose's variable interpolation (the compose spec's subset of shell syntax)."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = shell.get(name)
        unset_or_empty = not value
        missing = unset_or_empty if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if missing else value
        if op in (":?", "?"):
            if missing:
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
            return value
        if op in (":+", "+"):
            return "" if missing else arg
        return value or ""

    return _COMPOSE_VAR.sub(sub, text)


def interpolated(node, shell: dict[str, str]):
    if isinstance(node, str):
        return compose_interpolate(node, shell)
    if isinstance(node, list):
        return [interpolated(x, shell) for x in node]
    if isinstance(node, dict):
        return {k: interpolated(v, shell) for k, v in node.items()}
    return node


def container_env(shell: dict[str, str]) -> dict[str, str]:
    """The palaver container's environment: the image's ENV, then compose's ``environment``
    interpolated from ``shell`` (a bare ``NAME`` passes through only when set)."""
    env = docker_env(dockerfile_instructions((DEPLOY / "Dockerfile").read_text()))
    for item in interpolated(compose(), shell)["services"]["palaver"]["environment"]:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
        elif name in shell:
            env[name] = shell[name]
    return env


def deploy_config(**shell: str) -> Config:
    """deploy/palaver.json5 as the container loads it under `docker compose up`."""
    return load_config(DEPLOY / "palaver.json5",
                       env=container_env({"TELEGRAM_BOT_TOKEN": FAKE_TOKEN, **shell}))


def parse_duration(text: str) -> float:
    """A compose duration (``45s``, ``1m30s``) or a systemd time span (``45s``, ``1min``)."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(float(n) * units[u] for n, u in parts)


def worst_case_stop_s() -> float:
    """shutdownGraceSeconds (the schema default, or the deploy config's own if larger) plus
    20 s: WhatsApp's Go connect thread (up to 10 s), Telegram's shutdown, the store."""
    grace = max(AgentDefaults().shutdownGraceSeconds,
                deploy_config().agents.defaults.shutdownGraceSeconds)
    return grace + 20


# --------------------------------------------------------------------------- compose


def test_compose_parses_and_names_the_services():
    doc = compose()
    assert set(doc["services"]) == {"palaver", "localai"}
    localai = doc["services"]["localai"]
    assert localai["image"].startswith("localai/localai:")
    assert "gpu" not in localai["image"] and "cuda" not in localai["image"]  # CPU by default
    assert localai["healthcheck"]["test"][0] == "CMD"
    palaver = doc["services"]["palaver"]
    assert palaver["depends_on"]["localai"]["condition"] == "service_healthy"
    build = palaver["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert set(doc["volumes"]) >= {"palaver-data", "localai-models"}
    raw = (DEPLOY / "compose.yaml").read_text()
    assert "latest-gpu-nvidia-cuda" in raw and "capabilities: [gpu]" in raw  # the comment


def test_compose_volume_equals_dockerfile_volume_and_config_datadir(docker):
    palaver = compose()["services"]["palaver"]
    mounts = {v.split(":")[1]: v for v in palaver["volumes"]}
    assert json.loads(last(docker, "VOLUME")) == ["/data"]
    assert deploy_config().dataDir == "/data"
    assert mounts["/data"] == "palaver-data:/data"
    config_mount = mounts[CONFIG_IN_CONTAINER].split(":")
    assert config_mount[2] == "ro"
    assert (DEPLOY / config_mount[0]).resolve() == DEPLOY / "palaver.json5"


def test_compose_env_carries_secrets_and_config_path(docker):
    env = compose()["services"]["palaver"]["environment"]
    names = {item.split("=")[0] for item in env}
    assert {"TELEGRAM_BOT_TOKEN", "ANTHROPIC_API_KEY", CONFIG_ENV} <= names
    assert f"{CONFIG_ENV}={CONFIG_IN_CONTAINER}" in env
    assert docker_env(docker)[CONFIG_ENV] == CONFIG_IN_CONTAINER
    # No literal secret in the file: both come from the shell, as given.
    shell = {"TELEGRAM_BOT_TOKEN": FAKE_TOKEN, "ANTHROPIC_API_KEY": "sk-ant-from-shell-0001"}
    inside = container_env(shell)
    assert inside["TELEGRAM_BOT_TOKEN"] == FAKE_TOKEN
    assert inside["ANTHROPIC_API_KEY"] == "sk-ant-from-shell-0001"
    assert "ANTHROPIC_API_KEY" not in container_env({})  # not even empty when unset


def test_compose_interpolation_emulator_matches_the_spec():
    """The helper the tests below rely on (so a broken helper cannot pass them)."""
    shell = {"SET": "v", "EMPTY": ""}
    assert compose_interpolate("${SET:-d}|${EMPTY:-d}|${UNSET:-d}|${EMPTY-d}|$$SET", shell) == (
        "v|d|d||$SET")
    assert compose_interpolate("$SET/${SET}/${UNSET}", shell) == "v/v/"
    with pytest.raises(ComposeError, match="UNSET"):
        compose_interpolate("${UNSET:?set it}", shell)
    with pytest.raises(ComposeError, match="EMPTY"):
        compose_interpolate("${EMPTY:?set it}", shell)


def test_compose_needs_no_variable_so_whatsapp_login_runs_without_a_telegram_token(
        monkeypatch):
    """`docker compose run --rm palaver whatsapp login` with nothing exported: compose
    interpolates, the config loads, and the login command finds the data directory."""
    interpolated(compose(), {})  # raises ComposeError on a required ${X:?}
    env = container_env({})
    assert env["TELEGRAM_BOT_TOKEN"] == ""
    config = load_config(DEPLOY / "palaver.json5", env=env)
    assert config.channels.telegram is not None and config.channels.telegram.enabled
    assert config.channels.whatsapp is not None and not config.channels.whatsapp.enabled
    # The command itself, as the image runs it (ENTRYPOINT palaver, cwd /data).
    from channels.whatsapp.login import _data_dir

    args = build_parser().parse_args(["whatsapp", "login"])
    assert args.path == ("whatsapp", "login")
    for key in ("TELEGRAM_BOT_TOKEN", "PALAVER_TELEGRAM", "PALAVER_WHATSAPP"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv(CONFIG_ENV, str(DEPLOY / "palaver.json5"))  # the mount's source
    assert _data_dir(args) == Path("/data")


def test_whatsapp_only_is_chosen_from_the_environment():
    config = deploy_config(TELEGRAM_BOT_TOKEN="", PALAVER_TELEGRAM="false",
                           PALAVER_WHATSAPP="true")
    assert not config.channels.telegram.enabled
    assert config.channels.whatsapp.enabled
    assert config.channels.whatsapp.dmPolicy == "pairing"
    both = deploy_config(PALAVER_WHATSAPP="true")
    assert both.channels.telegram.enabled and both.channels.whatsapp.enabled
    default = deploy_config()
    assert default.channels.telegram.enabled and not default.channels.whatsapp.enabled


def test_a_bad_channel_switch_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"channels\.whatsapp\.enabled"):
        deploy_config(PALAVER_WHATSAPP="maybe")


def test_telegram_without_token_fails_at_start_naming_the_variable(monkeypatch):
    """compose passes an empty TELEGRAM_BOT_TOKEN when none is exported: the channel says
    which variable to set (and /healthz names telegram), the config itself stays valid."""
    from channels.telegram import TokenError, resolve_token

    config = deploy_config(TELEGRAM_BOT_TOKEN="")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", container_env({})["TELEGRAM_BOT_TOKEN"])
    with pytest.raises(TokenError, match=r"\$TELEGRAM_BOT_TOKEN"):
        resolve_token(config.channels.telegram)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", container_env(
        {"TELEGRAM_BOT_TOKEN": FAKE_TOKEN})["TELEGRAM_BOT_TOKEN"])
    assert resolve_token(config.channels.telegram) == FAKE_TOKEN


def test_compose_stop_grace_covers_the_worst_case_graceful_stop():
    grace = parse_duration(compose()["services"]["palaver"]["stop_grace_period"])
    assert grace > worst_case_stop_s()


def test_config_points_at_the_localai_service_it_runs_beside():
    doc = compose()
    config = deploy_config()
    primary, *fallbacks = config.candidates(config.default_selection())
    assert fallbacks == ["anthropic/claude-sonnet-4-5"]
    local = config.model(primary)
    url = urlsplit(local.base_url)
    assert (url.hostname, url.port, url.path) == ("localai", 8080, "/v1")
    assert url.hostname in doc["services"]
    # The model Palaver asks for is the one LocalAI is told to serve.
    assert doc["services"]["localai"]["command"] == [local.model_id]
    assert "8080" in " ".join(doc["services"]["localai"]["healthcheck"]["test"])


# --------------------------------------------------------------------------- config


def test_deploy_config_validates_and_keeps_secrets_in_the_environment():
    config = deploy_config(ANTHROPIC_API_KEY="sk-ant-test-key-0123456789")
    assert config.channels.telegram is not None
    # Not in the config at all: the channel reads $TELEGRAM_BOT_TOKEN when it starts.
    assert config.channels.telegram.botToken is None
    assert config.channels.telegram.tokenFile is None
    assert config.model("anthropic/claude-sonnet-4-5").api_key.get_secret_value() == (
        "sk-ant-test-key-0123456789")
    assert config.health == HealthConfig()  # the defaults the Dockerfile probes
    assert config.logging.format == "json" and config.logging.logMessageText is False
    text = (DEPLOY / "palaver.json5").read_text()
    assert "sk-" not in text and not re.search(r"\d{6,}:[A-Za-z0-9_-]{30,}", text)


def test_deploy_config_outside_compose_names_the_missing_switch():
    with pytest.raises(ConfigError, match="PALAVER_TELEGRAM is not set"):
        load_config(DEPLOY / "palaver.json5", env={})


def test_deploy_config_without_hosted_key_still_loads():
    config = deploy_config()
    assert config.model("anthropic/claude-sonnet-4-5").api_key is None


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_runs_as_non_root_with_volume_and_entrypoint(docker):
    runtime = runtime_stage(docker)
    users = [args for kw, args in runtime if kw == "USER"]
    assert users and users[-1] not in ("root", "0")
    user_line = next(args for kw, args in runtime if kw == "RUN" and "useradd" in args)
    assert f" {users[-1]}" in user_line and "--uid 0 " not in user_line
    assert json.loads(last(docker, "ENTRYPOINT")) == ["palaver"]
    assert json.loads(last(docker, "CMD")) == ["run"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "palaver" in pyproject["project"]["scripts"]
    assert build_parser().parse_args(["run"]).path == ("run",)
    assert last(docker, "FROM").startswith(("python:3.11-slim", "python:3.12-slim", "${"))
    assert re.search(r"python:3\.1[12]-slim", (DEPLOY / "Dockerfile").read_text())
    apt = next(args for kw, args in runtime if kw == "RUN" and "apt-get install" in args)
    assert "libmagic1" in apt  # neonize imports python-magic, which loads libmagic


def test_healthcheck_probes_the_default_health_address(docker):
    url = urlsplit(healthcheck_url(docker))
    defaults = HealthConfig()
    assert (url.hostname, url.port, url.path) == (defaults.host, defaults.port, HEALTH_PATH)
    assert healthcheck_command(docker)[0] == "python"  # no curl in the slim image


async def test_healthcheck_command_passes_on_200_and_fails_on_503(docker):
    """Run the HEALTHCHECK's own command against a real HealthServer."""
    command = healthcheck_command(docker)
    report = {"store": {"ok": True, "detail": ""}, "channels": {}}

    async def check() -> dict:
        return report

    server = HealthServer("127.0.0.1", 0, check=check, metrics=Metrics())
    async with server:
        default_port = f":{HealthConfig().port}/"
        argv = [sys.executable] + [a.replace(default_port, f":{server.port}/")
                                   for a in command[1:]]

        async def run() -> int:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            return await asyncio.wait_for(proc.wait(), 20)

        assert await run() == 0
        report["store"] = {"ok": False, "detail": "read-only"}
        assert await run() != 0


def test_dockerignore_lets_the_sources_in_and_keeps_secrets_out(docker):
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert lines[0] == "*"  # allow-list
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    sources = []
    for kw, args in docker:
        if kw == "COPY" and "--from=" not in args:
            sources += shlex.split(args)[:-1]
    assert sources and set(sources) <= allowed
    assert {"**/.env", "**/*.db"} <= set(lines)


# --------------------------------------------------------------------------- systemd


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit((DEPLOY / "palaver.service").read_text())


def test_unit_parses_with_the_expected_sections(unit):
    assert set(unit) == {"Unit", "Service", "Install"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0]


def test_unit_hardening(unit):
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    expected = {
        "User": "palaver", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "LockPersonality": "yes",
        "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes", "Restart": "on-failure",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet": "",
    }
    assert {k: svc.get(k) for k in expected} == expected
    assert unit["Service"]["ReadWritePaths"] == ["/var/lib/palaver"]  # the only writable path
    assert "/var/lib/" + svc["StateDirectory"] == "/var/lib/palaver"
    assert re.fullmatch(r"\d+s?", svc["RestartSec"])
    assert svc["EnvironmentFile"].lstrip("-").startswith("/etc/palaver/")
    assert "MemoryDenyWriteExecute" in svc  # a decision, explained in the unit's comment
    # Turns, WhatsApp's connect thread, Telegram and the store all finish before SIGKILL.
    assert parse_duration(svc["TimeoutStopSec"]) > worst_case_stop_s()
    assert svc.get("KillSignal", "SIGTERM") == "SIGTERM"  # what `palaver run` handles


def test_unit_execstart_is_a_valid_palaver_command(unit):
    (exec_start,) = unit["Service"]["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/palaver/.venv/bin/palaver"
    args = build_parser().parse_args(argv[1:])
    assert args.path == ("run",)
    assert args.config == "/etc/palaver/palaver.json5"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_passes_systemd_analyze_verify():
    result = subprocess.run(
        ["systemd-analyze", "verify", str(DEPLOY / "palaver.service")],
        capture_output=True, text=True, timeout=60,
    )
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable" not in line  # /opt/palaver not installed here
    ]
    assert complaints == []


# --------------------------------------------------------------------------- README


def operations_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Operations")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end != -1 else None]


def host_palaver_commands(text: str) -> list[list[str]]:
    """Every shell line (README code or a unit comment) that runs the installed
    /opt/palaver/.venv/bin/palaver (continuation lines joined)."""
    out = []
    joined = re.sub(r"\\\n#?\s*", " ", text)
    for raw in joined.splitlines():
        line = raw.strip().lstrip("#").strip().rstrip(".").strip("`")
        if line.startswith("ExecStart=") or "/opt/palaver/.venv/bin/palaver " not in line:
            continue
        out.append(shlex.split(line.split("  #")[0]))
    return out


@pytest.mark.parametrize("source", ["README.md", "deploy/palaver.service"])
def test_cli_commands_for_the_service_run_as_the_palaver_user(source):
    """pairing and whatsapp login write the store/session under the data dir: as root they
    would leave root-owned SQLite -wal/-shm and session files the service cannot open."""
    text = operations_section() if source == "README.md" else (ROOT / source).read_text()
    commands = host_palaver_commands(text)
    seen = set()
    for argv in commands:
        if "systemd-run" in argv:  # the documented variant that reads the env file
            assert "User=palaver" in argv, argv
        else:
            assert argv[:3] == ["sudo", "-u", "palaver"], argv
        binary = argv.index("/opt/palaver/.venv/bin/palaver")
        args = build_parser().parse_args(argv[binary + 1:])
        assert args.config == "/etc/palaver/palaver.json5", argv
        seen.add(args.path)
    assert {("pairing", "list"), ("pairing", "approve"), ("whatsapp", "login")} <= seen


def test_readme_documents_the_stop_timeout_and_channel_switches():
    section = operations_section()
    stop = parse_duration(compose()["services"]["palaver"]["stop_grace_period"])
    assert f"{stop:.0f} s" in section and f"--stop-timeout {stop:.0f}" in section
    switches = {item.partition("=")[0]: item.partition("=")[2]
                for item in interpolated(compose(), {})["services"]["palaver"]["environment"]}
    for name, default in (("PALAVER_TELEGRAM", "true"), ("PALAVER_WHATSAPP", "false")):
        assert switches[name] == default
        assert f"`{name}` (default `{default}`)" in section
    assert "run --rm palaver whatsapp login" in section


def test_readme_operations_section_names_every_metric():
    readme = (ROOT / "README.md").read_text()
    assert "<!-- section:ops -->" not in readme
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    m.message_received("x")
    m.message_refused("x", "y")
    m.message_answered("x")
    m.turn_finished("answered", 1, attempts=[])
    m.record_attempts([])
    names = {f.name + ("_total" if f.type == "counter" else "")
             for f in text_string_to_metric_families(m.render().decode())}
    assert len(names) == 12  # the usage metrics (tokens, cost, limit refusals) included
    for name in names:
        assert name in readme, name


# --------------------------------------------------------------------------- compose.cluster

CLUSTER_REPLICAS = ("palaver-1", "palaver-2")
CLUSTER_SHELL = {
    "TELEGRAM_BOT_TOKEN": FAKE_TOKEN,
    "TELEGRAM_WEBHOOK_SECRET": "wh-secret_from-shell-0001",
    "POSTGRES_PASSWORD": "pg-password-from-shell-0001",
    "PALAVER_PUBLIC_HOST": "bot.example.org",
    "PALAVER_MODEL_URL": "http://gpu-box:8080/v1",
    "PALAVER_MODEL": "llama-3.2-1b-instruct:q4_k_m",
}


def cluster_compose(shell: dict[str, str] | None = None) -> dict:
    """deploy/compose.cluster.yaml, interpolated from ``shell`` when given (anchors and
    ``<<`` merges resolved, as compose does)."""
    doc = yaml.safe_load((DEPLOY / "compose.cluster.yaml").read_text())
    return doc if shell is None else interpolated(doc, shell)


def caddy_sites(text: str) -> list[list[str]]:
    """The Caddyfile's directive lines (comments dropped), each split into words."""
    return [shlex.split(line.split("#")[0]) for line in text.splitlines()
            if line.split("#")[0].strip()]


def cluster_config(tmp_path: Path, replica: str) -> Config:
    """The config a replica mounts, loaded with that replica's environment."""
    doc = cluster_compose(CLUSTER_SHELL)
    service = doc["services"][replica]
    (mount,) = service["configs"]
    assert mount["target"] == service["environment"][CONFIG_ENV]
    path = tmp_path / "palaver.json5"
    path.write_text(doc["configs"][mount["source"]]["content"])
    return load_config(path, env={k: str(v) for k, v in service["environment"].items()})


def test_cluster_compose_services_volumes_and_dependencies():
    doc = cluster_compose()
    assert set(doc["services"]) == {"postgres", *CLUSTER_REPLICAS, "caddy"}
    pg = doc["services"]["postgres"]
    assert pg["image"] == "postgres:16"
    volume, _, target = pg["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data" and volume in doc["volumes"]
    assert pg["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"][1:])
    data_volumes = set()
    for name in CLUSTER_REPLICAS:
        replica = doc["services"][name]
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        build = replica["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in replica["volumes"]}
        assert mounts["/data"] in doc["volumes"]
        data_volumes.add(mounts["/data"])
        assert "/data" not in {v.split(":")[1] for v in pg["volumes"]}
        assert parse_duration(replica["stop_grace_period"]) > worst_case_stop_s()
    assert len(data_volumes) == len(CLUSTER_REPLICAS)  # each replica its own dataDir


def test_cluster_compose_publishes_only_the_proxy():
    doc = cluster_compose()
    published = {name: svc.get("ports", []) for name, svc in doc["services"].items()}
    assert all(not ports for name, ports in published.items() if name != "caddy"), published
    targets = {str(p).rsplit(":", 1)[-1] for p in published["caddy"]}
    assert "443" in targets and targets <= {"443", "80"}  # 80: the ACME challenge only
    caddy = doc["services"]["caddy"]
    assert caddy["image"].startswith("caddy:")
    mounts = {v.split(":")[1]: v.split(":") for v in caddy["volumes"]}
    source, _, mode = mounts["/etc/caddy/Caddyfile"]
    assert mode == "ro" and (DEPLOY / source).resolve() == DEPLOY / "Caddyfile"


def test_cluster_caddyfile_balances_each_request_over_both_replicas(tmp_path):
    config = cluster_config(tmp_path, CLUSTER_REPLICAS[0])
    telegram = config.channels.telegram
    assert telegram is not None
    words = caddy_sites((DEPLOY / "Caddyfile").read_text())
    # The site is the public host the webhook URL names (Caddy's {$VAR} from the env).
    assert words[0] == ["{$PALAVER_PUBLIC_HOST}", "{"]
    assert "PALAVER_PUBLIC_HOST" in cluster_compose()["services"]["caddy"]["environment"]
    assert urlsplit(telegram.webhookUrl or "").path == telegram.webhookPath
    assert ["handle", telegram.webhookPath, "{"] in words
    (proxy,) = [w for w in words if w[0] == "reverse_proxy"]
    assert proxy[-1] == "{"
    assert set(proxy[1:-1]) == {f"{name}:{telegram.webhookPort}" for name in CLUSTER_REPLICAS}
    options = {w[0]: w[1:] for w in words}
    assert options["lb_policy"] == ["round_robin"]
    assert options["health_uri"] == [HEALTH_PATH]
    assert options["health_port"] == [str(config.health.port)]
    assert options["health_status"] == ["200"]
    # Only the webhook is proxied; the rest of the host answers 404.
    assert ["respond", "404"] in words


def test_cluster_replicas_load_webhook_mode_on_postgresql_with_secrets_from_env(
        tmp_path, monkeypatch):
    from bridge.store import DATABASE_URL_ENV, database_url

    doc = cluster_compose(CLUSTER_SHELL)
    for name in CLUSTER_REPLICAS:
        config = cluster_config(tmp_path, name)
        telegram = config.channels.telegram
        assert telegram is not None and telegram.mode == "webhook"
        assert telegram.webhookSecret is not None
        assert telegram.webhookSecret.get_secret_value() == CLUSTER_SHELL[
            "TELEGRAM_WEBHOOK_SECRET"]
        assert urlsplit(telegram.webhookUrl or "").hostname == CLUSTER_SHELL[
            "PALAVER_PUBLIC_HOST"]
        assert telegram.webhookHost == "0.0.0.0" and telegram.botToken is None
        assert config.health.host == "0.0.0.0"  # for the proxy's checks on the network
        assert config.store.leaseSeconds == 30 and config.store.url is None
        assert config.dataDir == "/data"
        env = doc["services"][name]["environment"]
        assert env["TELEGRAM_BOT_TOKEN"] == FAKE_TOKEN
        monkeypatch.setenv(DATABASE_URL_ENV, env[DATABASE_URL_ENV])
        url = urlsplit(database_url(config) or "")
        assert (url.scheme, url.hostname, url.port, url.username, url.password) == (
            "postgresql", "postgres", 5432, "palaver", CLUSTER_SHELL["POSTGRES_PASSWORD"])
        assert url.hostname in doc["services"]
        pg_env = doc["services"]["postgres"]["environment"]
        assert url.path == "/" + pg_env["POSTGRES_DB"] and url.username == pg_env[
            "POSTGRES_USER"]


def test_cluster_compose_takes_every_secret_from_the_shell():
    raw = (DEPLOY / "compose.cluster.yaml").read_text()
    assert "sk-" not in raw and not re.search(r"\d{6,}:[A-Za-z0-9_-]{30,}", raw)
    doc = cluster_compose()
    for service in doc["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if re.search(r"TOKEN|SECRET|PASSWORD|DATABASE_URL", name):
                assert re.search(r"\$\{[A-Z_]+:\?", str(value)), (name, value)
    for missing in ("POSTGRES_PASSWORD", "TELEGRAM_WEBHOOK_SECRET", "TELEGRAM_BOT_TOKEN"):
        shell = {k: v for k, v in CLUSTER_SHELL.items() if k != missing}
        with pytest.raises(ComposeError, match=missing):
            cluster_compose(shell)
    # The same values reach postgres and the replicas (one password, not two).
    doc = cluster_compose(CLUSTER_SHELL)
    assert CLUSTER_SHELL["POSTGRES_PASSWORD"] in doc["services"]["palaver-1"]["environment"][
        "PALAVER_DATABASE_URL"]
    assert doc["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == CLUSTER_SHELL[
        "POSTGRES_PASSWORD"]
