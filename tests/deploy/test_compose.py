"""compose.yaml: services, volumes and environment resolved through the real config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from qqbridge.app import SHUTDOWN_SECONDS
from qqbridge.config import load_config
from qqbridge.qqsim.fixture import load_fixture
from qqbridge.registration import generate
from qqbridge.store.database import parse_url
from tests.deploy.helpers import (
    COMPOSE,
    DOCKER,
    DOCKERFILE,
    ENV_EXAMPLE,
    REPO,
    Dockerfile,
    bridge_env,
    config_key,
    dockerfile_env,
    example_config,
    fenced_shell_lines,
    image_tag,
    parse_cli,
    qqbridge_invocations,
)

# ---- compose.yaml -----------------------------------------------------------------------


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")


def interpolate(value: Any, env: dict[str, str], used: set[str]) -> Any:
    """Compose's variable substitution: ${X}, ${X:-default}, ${X-default}, ${X:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        used.add(name)
        op, arg = match["op"] or "", match["arg"] or ""
        present = name in env and (env[name] != "" or not op.startswith(":"))
        if present:
            return env[name]
        if op.endswith("?"):
            pytest.fail(f"compose.yaml needs {name} ({arg}), and .env.example does not set it")
        if op.endswith("-"):
            return arg
        return ""

    return _VARIABLE.sub(one, value)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not NAME=value"
            env[name.strip()] = value.strip()
    return env


@dataclass
class Mount:
    source: str
    target: str
    named: bool  # a named volume (else a bind mount of a host path)


def mounts(service: dict[str, Any]) -> list[Mount]:
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            source, target = entry.get("source", ""), entry["target"]
        else:
            source, target = entry.split(":")[:2]
        result.append(Mount(source, target, not source.startswith((".", "/", "~"))))
    return result


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    used: set[str] = set()
    document = interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), read_env_file(ENV_EXAMPLE), used)
    unused = set(read_env_file(ENV_EXAMPLE)) - used
    assert not unused, f".env.example sets variables that compose.yaml never reads: {sorted(unused)}"
    return document


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {name: str(value) for name, value in env.items()}


def test_compose_services_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"synapse", "postgres", "qqbridge", "qq-sim"} <= services.keys()
    assert services["qq-sim"]["profiles"] == ["demo"]
    for name in ("synapse", "postgres", "qqbridge"):
        assert "profiles" not in services[name], f"{name} should start without a profile"
    depends = services["qqbridge"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert "synapse" in depends
    for name, condition in depends.items():
        if condition["condition"] == "service_healthy":
            assert "healthcheck" in services[name], f"qqbridge waits for {name} to be healthy, which has no check"
    postgres = services["postgres"]
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    for name, service in services.items():
        if "image" in service and "build" not in service:
            tag = image_tag(service["image"])
            assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: pin {service['image']}"
    assert image_tag(postgres["image"]).split("-")[0] == "16"
    synapse = tuple(int(n) for n in re.findall(r"\d+", image_tag(services["synapse"]["image"]))[:2])
    assert synapse >= (1, 84), "the appservice ping (README, REGISTERING.md) needs Synapse 1.84+"
    for name in ("qqbridge", "qq-sim"):
        build = services[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).resolve() == DOCKERFILE
    grace = re.fullmatch(r"(\d+)s", services["qqbridge"]["stop_grace_period"])
    assert grace and int(grace[1]) >= 2 * SHUTDOWN_SECONDS


def test_compose_volumes_are_declared_and_exist(compose: dict[str, Any], dockerfile: Dockerfile) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for mount in mounts(service):
            if mount.named:
                assert mount.source in declared, f"{name}: volume {mount.source} is not declared"
                used.add(mount.source)
            else:
                assert (COMPOSE.parent / mount.source).exists(), f"{name}: bind mount {mount.source} does not exist"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    bridge = {m.target: m for m in mounts(compose["services"]["qqbridge"])}
    assert bridge["/data"].named, "the bridge's /data (config, tokens) belongs on a named volume"
    assert compose["services"]["postgres"]["volumes"], "the database must outlive the container"
    assert any(m.target == "/data" and m.named for m in mounts(compose["services"]["synapse"]))


def compose_bridge_env(compose: dict[str, Any], dockerfile: Dockerfile) -> dict[str, str]:
    """The QQBRIDGE_ variables inside the bridge's container: the image's, then compose's."""
    env = {**dockerfile_env(dockerfile), **service_env(compose["services"]["qqbridge"])}
    return {name: value for name, value in env.items() if name.startswith("QQBRIDGE_")}


def test_compose_env_is_real_config_and_points_at_the_services(
    compose: dict[str, Any], dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = compose["services"]
    env = compose_bridge_env(compose, dockerfile)
    for name in service_env(services["qqbridge"]):
        if name.startswith("QQBRIDGE_"):
            assert config_key(name), f"compose.yaml: {name}: no such config key"
    bridge_env(monkeypatch, env)
    config = load_config(example_config(tmp_path), require_tokens=False)

    # the database is the postgres service's, with its user, password and database
    postgres = service_env(services["postgres"])
    db = urlsplit(config.database.url)
    assert parse_url(config.database.url)[0] == "postgresql"
    assert (db.hostname, db.username, db.password, db.path) == (
        "postgres",
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        "/" + postgres["POSTGRES_DB"],
    )
    # the homeserver is the synapse service, on the port its listener uses, same domain
    homeserver = urlsplit(config.homeserver.url)
    assert homeserver.hostname == "synapse" and homeserver.port == 8008
    assert any(str(p).endswith(":8008") for p in services["synapse"].get("ports", []))
    assert config.homeserver.domain == service_env(services["synapse"])["SYNAPSE_SERVER_NAME"]
    # Synapse reaches the bridge by its service name, on the port it listens on and exposes
    appservice = urlsplit(config.appservice.url)
    assert appservice.hostname == "qqbridge"
    assert appservice.port == config.appservice.port
    assert [i.args for i in dockerfile.final("EXPOSE")] == [str(config.appservice.port)]
    assert config.appservice.host == "0.0.0.0"
    # by default the QQ server is the simulator, on the port it is told to use
    qq = urlsplit(config.qq.server_url)
    sim = parse_cli(services["qq-sim"]["command"], "compose.yaml qq-sim")
    assert (qq.hostname, qq.port) == ("qq-sim", sim.port)


def test_compose_commands_are_real_and_the_demo_fixture_loads(compose: dict[str, Any]) -> None:
    services = compose["services"]
    if "command" in services["qqbridge"]:
        args = parse_cli(services["qqbridge"]["command"], "compose.yaml qqbridge")
        assert args.command == "run"
    command = services["qq-sim"]["command"]
    assert command[0] == "qq-sim"
    args = parse_cli(command, "compose.yaml qq-sim")
    assert args.host == "0.0.0.0"
    fixture_dir = PurePosixPath(args.fixture).parent.as_posix()
    (mount,) = [m for m in mounts(services["qq-sim"]) if m.target == fixture_dir]
    load_fixture(COMPOSE.parent / mount.source / PurePosixPath(args.fixture).name)


def test_registration_reaches_synapse(
    compose: dict[str, Any], dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's generate-registration writes the file where Synapse, through the
    shared volume and synapse/appservices.yaml, loads it; and that registration matches
    Synapse's server name and sends Synapse to the bridge's service."""
    services = compose["services"]
    synapse, bridge = mounts(services["synapse"]), mounts(services["qqbridge"])
    # Synapse's command loads every config dir that is mounted (appservices.yaml among them)
    command = services["synapse"]["command"]
    loaded = [command[i + 1] for i, word in enumerate(command) if word == "--config-path"]
    assert "/data/homeserver.yaml" in loaded
    extra = {m.target: m for m in synapse if not m.named}
    (conf,) = [extra[p.rstrip("/")] for p in loaded if p.rstrip("/") in extra]
    listed = yaml.safe_load((COMPOSE.parent / conf.source / "appservices.yaml").read_text(encoding="utf-8"))
    (in_synapse,) = listed["app_service_config_files"]
    # ... from a named volume that the bridge mounts too
    (shared,) = [m for m in synapse if m.named and in_synapse.startswith(m.target.rstrip("/") + "/")]
    (mine,) = [m for m in bridge if m.source == shared.source]
    expected = mine.target.rstrip("/") + in_synapse[len(shared.target.rstrip("/")) :]
    # ... which is where the README tells the bridge to write it
    readme = DOCKER / "README.md"
    commands = [
        argv for line in fenced_shell_lines(readme) for argv in qqbridge_invocations(line) if "docker compose" in line
    ]
    registrations = [parse_cli(argv, str(readme)) for argv in commands if argv[0] == "generate-registration"]
    assert registrations, "deploy/docker/README.md never runs generate-registration"
    for args in registrations:
        assert args.output == expected, f"README writes the registration to {args.output}, Synapse reads {expected}"
        assert args.config == "/data/config.yaml"

    # what that command writes, with the container's environment
    bridge_env(monkeypatch, compose_bridge_env(compose, dockerfile))
    registration = generate(example_config(tmp_path), tmp_path / "registration.yaml")
    domain = service_env(services["synapse"])["SYNAPSE_SERVER_NAME"]
    regexes = [re.compile(n["regex"]) for n in registration["namespaces"]["users"]]
    assert any(r.fullmatch(f"@qqbridge:{domain}") for r in regexes)
    assert any(r.fullmatch(f"@_qq_10001:{domain}") for r in regexes)
    assert urlsplit(registration["url"]).hostname == "qqbridge"


# ---- compose.host.yaml ------------------------------------------------------------------


def test_compose_host_override_puts_every_service_on_loopback(compose: dict[str, Any]) -> None:
    """compose.host.yaml (host networking, README "Host networking"): every service in the
    host's network, every service name resolving to 127.0.0.1, every listener on loopback,
    every port variable it reads documented in the README."""
    text = (DOCKER / "compose.host.yaml").read_text(encoding="utf-8")

    class Tagged(yaml.SafeLoader):
        pass

    Tagged.add_constructor("!reset", lambda loader, node: None)
    host = interpolate(yaml.load(text, Loader=Tagged), read_env_file(ENV_EXAMPLE), set())  # noqa: S506
    names = set(compose["services"])
    assert set(host["services"]) == names
    for name, service in host["services"].items():
        assert service["network_mode"] == "host", name
        assert {entry.split(":")[0] for entry in service["extra_hosts"]} == names, name
        assert all(entry.endswith(":127.0.0.1") for entry in service["extra_hosts"]), name
    assert "listen_addresses=127.0.0.1" in host["services"]["postgres"]["command"]
    assert host["services"]["qqbridge"]["environment"]["QQBRIDGE_APPSERVICE__HOST"] == "127.0.0.1"
    sim = parse_cli(host["services"]["qq-sim"]["command"], "compose.host.yaml qq-sim")
    assert sim.host == "127.0.0.1"
    listeners = yaml.safe_load((DOCKER / "synapse-host" / "listeners.yaml").read_text(encoding="utf-8"))
    assert [listener["bind_addresses"] for listener in listeners["listeners"]] == [["127.0.0.1"]]
    readme = (DOCKER / "README.md").read_text(encoding="utf-8")
    for variable in set(re.findall(r"\$\{(\w+)", text)) - {"POSTGRES_PASSWORD"}:
        assert f"`{variable}`" in readme, f"compose.host.yaml reads {variable}; the README never explains it"
