"""The compose files' contract: what the container stack needs to start in order, stop
cleanly and keep the stdio stream intact. Reads the YAML as compose would see it after
merging YAML anchors (`<<`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.test.yml", "docker-compose.prod.yml"]
SUPERVISOR_DEFAULT_GRACE = 8.0  # mcp-supervisor's MCP_SUPERVISOR_GRACE_PERIOD default
HEARTBEAT_MAX_AGE = 15.0  # 3 x the 5 s heartbeat interval
CHECK = ["CMD", "mcp-supervisor", "--check"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|h|m|s)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(value: str | int | float) -> float:
    """A compose duration ("1m30s", "12s", 500ms) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(data, dict)
    return data


def our_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run mcp-supervisor: those built from this repo or from our image."""
    out = {}
    for name, svc in doc["services"].items():
        build = svc.get("build")
        image = str(svc.get("image", ""))
        if (build and build.get("target") == "runtime") or "CODEBASE_MCP_IMAGE" in image:
            out[name] = svc
    return out


def supervisor_grace(svc: dict[str, Any]) -> float:
    env = svc.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    raw = str(env.get("MCP_SUPERVISOR_GRACE_PERIOD", SUPERVISOR_DEFAULT_GRACE))
    # "${MCP_SUPERVISOR_GRACE_PERIOD:-8}" -> its default
    match = re.fullmatch(r"\$\{MCP_SUPERVISOR_GRACE_PERIOD:-([0-9.]+)\}", raw)
    return float(match.group(1) if match else raw)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_no_obsolete_version_key(name: str) -> None:
    assert "version" not in load(name)


def test_duration_parser() -> None:
    assert seconds("12s") == 12
    assert seconds("1m30s") == 90
    assert seconds("500ms") == 0.5
    with pytest.raises(ValueError, match="duration"):
        seconds("12 seconds")


def size_bytes(value: str | int) -> int:
    """A compose byte size (`1gb`, `512m`, 1073741824) in bytes."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(value).strip().lower())
    assert match, f"not a size: {value!r}"
    return int(match[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match[2]]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_postgres_has_shared_memory_for_a_parallel_index_build(name: str) -> None:
    """Docker's 64 MiB /dev/shm fails a parallel HNSW build ("could not resize shared
    memory segment"); the server falls back to a slow serial build, so give it room."""
    pg = load(name)["services"]["postgres"]
    assert size_bytes(pg.get("shm_size", "64m")) >= 1 << 30


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.prod.yml"])
def test_stack_dependencies_are_healthchecked(name: str) -> None:
    services = load(name)["services"]
    pg = services["postgres"]
    assert pg["image"].startswith("pgvector/pgvector:"), "PostgreSQL without pgvector"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    ollama = services["ollama"]
    assert ollama["image"].startswith("ollama/ollama")
    test = ollama["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "ollama", "the ollama image has no curl"
    assert any(str(v).endswith(":/root/.ollama") for v in ollama["volumes"]), "models volume"


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.prod.yml"])
def test_server_waits_for_healthy_dependencies(name: str) -> None:
    services = our_services(load(name))
    assert services
    for svc_name, svc in services.items():
        deps = svc["depends_on"]
        assert isinstance(deps, dict), f"{svc_name}: long depends_on form with conditions"
        assert set(deps) == {"postgres", "ollama"}
        for dep in deps.values():
            assert dep["condition"] == "service_healthy", svc_name


def compose_default(value: object) -> str:
    """A compose value with `${VAR:-default}` read as its default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.prod.yml"])
def test_server_is_told_to_use_and_wait_for_ollama(name: str) -> None:
    """The image has no local model and the supervisor waits for Ollama only when asked
    to: the stacks say so explicitly rather than leave it to the defaults."""
    for svc_name, svc in our_services(load(name)).items():
        env = svc["environment"]
        assert compose_default(env["OLLAMA_BASE_URL"]).startswith("http://ollama:"), svc_name
        waits = compose_default(env["MCP_SUPERVISOR_WAIT_FOR"]).split(",")
        assert {"postgres", "ollama"} <= set(waits), svc_name


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.prod.yml"])
def test_server_healthcheck_stop_and_init(name: str) -> None:
    for svc_name, svc in our_services(load(name)).items():
        hc = svc["healthcheck"]
        assert hc["test"] == CHECK, svc_name
        # A dead server must fail the check well before Docker gives up on it.
        assert seconds(hc["interval"]) <= HEARTBEAT_MAX_AGE
        assert seconds(hc["timeout"]) < seconds(hc["interval"])
        assert seconds(hc["start_period"]) >= 30
        grace = seconds(svc["stop_grace_period"])
        assert grace > supervisor_grace(svc) + 2, f"{svc_name}: Docker would SIGKILL first"
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
        assert svc.get("init") is not True, "mcp-supervisor is PID 1, no docker-init"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_no_tty_anywhere(name: str) -> None:
    """A TTY turns \\n into \\r\\n and echoes input: it corrupts the MCP stream."""
    for svc_name, svc in load(name)["services"].items():
        assert svc.get("tty") in (None, False), svc_name


def test_stdio_service_keeps_stdin_open() -> None:
    svc = load("docker-compose.yml")["services"]["codebase-mcp"]
    assert svc["stdin_open"] is True
    assert svc.get("tty") is False
    assert "profiles" not in svc
    assert (svc.get("environment") or {}).get("MCP_TRANSPORT", "stdio") == "stdio"


def test_http_service_publishes_a_port() -> None:
    svc = load("docker-compose.yml")["services"]["codebase-mcp-http"]
    assert svc["profiles"] == ["http"]
    assert svc["environment"]["MCP_TRANSPORT"] == "http"
    assert svc["environment"]["MCP_HOST"] == "0.0.0.0"
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    # The shared environment (database URL, Ollama) is merged in, not replaced.
    assert "REGISTRY_DATABASE_URL" in svc["environment"]


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.prod.yml"])
def test_workspace_is_mounted_read_only(name: str) -> None:
    for svc_name, svc in our_services(load(name)).items():
        mounts = [v for v in svc["volumes"] if isinstance(v, dict)]
        ws = [m for m in mounts if m["target"] == "/workspace"]
        assert len(ws) == 1, f"{svc_name}: long-form /workspace bind mount"
        assert ws[0]["type"] == "bind"
        assert ws[0]["read_only"] is True


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_named_volumes_are_declared(name: str) -> None:
    doc = load(name)
    declared = set(doc.get("volumes") or {})
    for svc in doc["services"].values():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if isinstance(vol, dict) and vol.get("type") != "volume":
                continue
            if source and not source.startswith((".", "/", "$", "~")):
                assert source in declared, f"undeclared named volume {source}"


def test_prod_uses_a_prebuilt_image_and_no_inline_secrets() -> None:
    doc = load("docker-compose.prod.yml")
    for svc_name, svc in doc["services"].items():
        assert "build" not in svc, svc_name
    server = doc["services"]["codebase-mcp"]
    assert server["image"].startswith("${CODEBASE_MCP_IMAGE:?")
    assert server["environment"]["MCP_TRANSPORT"] == "http"
    assert int(str(server["deploy"]["replicas"]).split(":-")[-1].rstrip("}")) >= 2
    assert server["deploy"]["resources"]["limits"]["memory"]
    assert server["read_only"] is True
    assert "/tmp" in server["tmpfs"]
    assert "POSTGRES_PASSWORD_FILE" in doc["services"]["postgres"]["environment"]
    # Passwords only through interpolation (the environment) or secret files, never literal.
    for svc in doc["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if "PASSWORD" in key and not key.endswith("_FILE"):
                assert str(value).startswith("${"), key
    assert "${POSTGRES_PASSWORD:?" in server["environment"]["REGISTRY_DATABASE_URL"]
    assert doc["secrets"]["postgres_password"] == {"environment": "POSTGRES_PASSWORD"}


def _haproxy_cfg() -> str:
    return (ROOT / "deploy/haproxy/haproxy.cfg").read_text()


def test_prod_publishes_one_port_through_the_load_balancer() -> None:
    """The replicas publish nothing; haproxy (official image) publishes one port and
    finds them by the service name on the port they listen on."""
    doc = load("docker-compose.prod.yml")
    server = doc["services"]["codebase-mcp"]
    assert "ports" not in server, "replicas are reached through the balancer only"
    lb = doc["services"]["loadbalancer"]
    assert str(lb["image"]).startswith("haproxy:")
    assert len(lb["ports"]) == 1
    published = str(lb["ports"][0])
    assert published.startswith("${CODEBASE_MCP_PORT:-127.0.0.1:")
    container_port = published.rsplit(":", 1)[1]
    cfg = _haproxy_cfg()
    assert re.search(rf"^\s*bind :{container_port}$", cfg, re.M), "frontend port"
    (mount,) = lb["configs"]
    assert mount["target"] == "/usr/local/etc/haproxy/haproxy.cfg"
    assert doc["configs"][mount["source"]]["file"] == "./deploy/haproxy/haproxy.cfg"
    assert (ROOT / "deploy/haproxy/haproxy.cfg").is_file()
    # The backend: the service's name and MCP_PORT, with a slot for every replica.
    match = re.search(r"^\s*server-template \S+ 1-(\d+) (\S+):(\d+) ", cfg, re.M)
    assert match, "a server-template line"
    assert match[2] == "codebase-mcp"
    assert match[3] == server["environment"]["MCP_PORT"]
    replicas = int(str(server["deploy"]["replicas"]).split(":-")[-1].rstrip("}"))
    assert int(match[1]) >= replicas
    # No stickiness: the replicas run stateless streamable HTTP.
    assert server["environment"].get("MCP_STATELESS_HTTP", "true") == "true"
    lines = [line.split() for line in cfg.splitlines() if line.strip() and line.strip()[0] != "#"]
    assert not {"stick", "stick-table", "cookie"} & {words[0] for words in lines}
    assert [w[1] for w in lines if w[0] == "balance"] in (["leastconn"], ["roundrobin"])


def test_balancer_health_checks_use_a_host_the_server_accepts() -> None:
    """The server answers 421 to a Host it does not know, and a Host-less check would
    fail too: haproxy checks /health with Host localhost (always accepted)."""
    cfg = _haproxy_cfg()
    assert re.search(r"http-check send meth GET uri /health ver HTTP/1.1 hdr Host localhost", cfg)
    assert "http-check expect status 200" in cfg


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.prod.yml"])
def test_http_services_off_loopback_say_how_they_authenticate(name: str) -> None:
    """Otherwise the server refuses to start (exit 78)."""
    for svc_name, svc in our_services(load(name)).items():
        env = svc.get("environment") or {}
        if env.get("MCP_TRANSPORT") != "http" or env.get("MCP_HOST") in (None, "127.0.0.1"):
            continue
        tokens = str(env.get("MCP_AUTH_TOKENS", ""))
        required = tokens.startswith("${MCP_AUTH_TOKENS:?")
        disabled = str(env.get("MCP_AUTH_DISABLED", "")).endswith("true}")
        assert required or env.get("MCP_AUTH_JWKS_URI") or disabled, svc_name
        if name == "docker-compose.prod.yml":
            assert required, f"{svc_name}: production requires tokens"
            for port in svc.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), "published beyond loopback"


def test_test_stack_runs_the_suite_in_the_image() -> None:
    doc = load("docker-compose.test.yml")
    tests = doc["services"]["tests"]
    assert tests["build"]["target"] == "test"
    assert tests["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pytest" in " ".join(tests["entrypoint"])
    assert "mcp-supervisor migrate" in " ".join(tests["entrypoint"])
    assert doc["services"]["postgres"]["image"].startswith("pgvector/pgvector:")


def test_env_example_documents_what_compose_interpolates() -> None:
    documented = set(
        re.findall(r"^#?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    for name in COMPOSE_FILES:
        used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (ROOT / name).read_text()))
        assert used <= documented, f"{name}: undocumented {sorted(used - documented)}"


def _env_names(model: type[Any]) -> dict[str, set[str]]:
    """Each settings field's upper-case environment variable names."""
    out = {}
    for field_name, info in model.model_fields.items():
        choices = getattr(info.validation_alias, "choices", [info.validation_alias])
        out[field_name] = {c for c in choices if isinstance(c, str) and c.isupper()}
    return out


@pytest.mark.parametrize(
    "module",
    [
        "mcp_supervisor.config:SupervisorSettings",
        "codebase_mcp.config:Settings",
        "codebase_mcp.serve.http_security:HttpSecuritySettings",
    ],
)
def test_env_example_documents_every_setting(module: str) -> None:
    import importlib

    mod_name, cls_name = module.split(":")
    model = getattr(importlib.import_module(mod_name), cls_name)
    documented = set(
        re.findall(r"^#?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    missing = {f: n for f, n in _env_names(model).items() if n and not n & documented}
    assert not missing, f".env.example lacks {missing}"


def test_dev_project_name_fixes_the_network_clients_join() -> None:
    """The README's `docker run --network codebase-mcp_default` relies on it."""
    assert load("docker-compose.yml")["name"] == "codebase-mcp"
    assert "--network codebase-mcp_default" in (ROOT / "README.md").read_text()
