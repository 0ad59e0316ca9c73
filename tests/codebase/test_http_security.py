"""Who may use the http transport: Host/Origin (DNS rebinding), bearer tokens and JWTs
(FastMCP's verifiers), and the refusal to serve an open port. Real server processes,
real HTTP, real MCP clients (FastMCP's and the official SDK's)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from codebase_mcp.errors import ConfigError
from codebase_mcp.serve.http_security import (
    allowed_hosts,
    check_exposure,
    default_http_security,
    is_loopback,
    load_http_security,
)
from tests.codebase.fixtures_engine import migrate, write_repo
from tests.support.fake_ollama import FakeOllama
from tests.support.http_servers import (
    HttpServer,
    JwksServer,
    rsa_jwk,
    running_servers,
    server_env,
)
from tests.support.pg import PostgresCluster

TOKEN_A = "tok-a-" + uuid.uuid4().hex
TOKEN_B = "tok-b-" + uuid.uuid4().hex
ISSUER = "https://idp.test.example"
AUDIENCE = "codebase-mcp"
KID = "test-key-1"
CONFIGURED_HOST = "mcp.internal.example"

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "http-security-test", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


# --- the settings and the decisions (pure) ---------------------------------------------


def test_lists_split_on_commas_and_whitespace() -> None:
    s = load_http_security(
        {
            "MCP_ALLOWED_HOSTS": "a.example, b.example,,c.example",
            "MCP_ALLOWED_ORIGINS": "https://app.example",
            "MCP_AUTH_TOKENS": f"{TOKEN_A},\n{TOKEN_B}\n",  # a secret file's trailing newline
        }
    )
    assert s.allowed_hosts == ["a.example", "b.example", "c.example"]
    assert s.allowed_origins == ["https://app.example"]
    assert s.tokens == [TOKEN_A, TOKEN_B]
    assert s.stateless is True
    assert TOKEN_A not in repr(s)
    assert TOKEN_A not in s.describe_auth()
    assert default_http_security().auth_configured is False


def test_every_bad_setting_is_named_and_no_token_is_shown() -> None:
    weak = "weak-secret"
    with pytest.raises(ConfigError) as info:
        load_http_security(
            {
                "MCP_AUTH_TOKENS": f"{TOKEN_A},{weak}",
                "MCP_AUTH_JWKS_URI": "ftp://keys.example/jwks",
                "MCP_AUTH_ALGORITHM": "HS256",
                "MCP_ALLOWED_ORIGINS": "app.example",
                "MCP_AUTH_DISABLED": "maybe",
            }
        )
    message = str(info.value)
    for name in (
        "MCP_AUTH_TOKENS: token 2 of 2 has 11 characters",
        "MCP_AUTH_JWKS_URI",
        "MCP_AUTH_ALGORITHM",
        "MCP_ALLOWED_ORIGINS",
        "MCP_AUTH_DISABLED",
    ):
        assert name in message
    assert weak not in message
    assert TOKEN_A not in message


def test_jwt_settings_need_issuer_and_audience_and_contradictions_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"MCP_AUTH_ISSUER: is required.*MCP_AUTH_AUDIENCE"):
        load_http_security({"MCP_AUTH_JWKS_URI": "https://idp.example/jwks.json"})
    with pytest.raises(ConfigError, match="MCP_AUTH_AUDIENCE: has no effect"):
        load_http_security({"MCP_AUTH_AUDIENCE": "x"})
    with pytest.raises(ConfigError, match="MCP_AUTH_DISABLED"):
        load_http_security({"MCP_AUTH_DISABLED": "true", "MCP_AUTH_TOKENS": TOKEN_A})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("myhost", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_open_port_needs_authentication_or_an_explicit_opt_out() -> None:
    check_exposure("127.0.0.1", default_http_security())
    with pytest.raises(ConfigError) as info:
        check_exposure("0.0.0.0", default_http_security())
    assert "MCP_AUTH_TOKENS" in str(info.value)
    assert "MCP_AUTH_DISABLED=true" in str(info.value)
    check_exposure("0.0.0.0", load_http_security({"MCP_AUTH_TOKENS": TOKEN_A}))
    check_exposure("0.0.0.0", load_http_security({"MCP_AUTH_DISABLED": "true"}))
    check_exposure(
        "0.0.0.0",
        load_http_security(
            {
                "MCP_AUTH_JWKS_URI": "https://idp.example/jwks.json",
                "MCP_AUTH_ISSUER": ISSUER,
                "MCP_AUTH_AUDIENCE": AUDIENCE,
            }
        ),
    )


def test_a_bind_name_is_an_allowed_host_an_address_is_not_needed() -> None:
    s = load_http_security({"MCP_ALLOWED_HOSTS": "svc.example"})
    assert allowed_hosts("0.0.0.0", s) == ["svc.example"]
    assert allowed_hosts("10.0.0.7", s) == ["svc.example"]  # FastMCP adds the local address
    assert allowed_hosts("mcp-host", s) == ["svc.example", "mcp-host"]


# --- a real server: Host/Origin, tokens, JWTs ------------------------------------------


@dataclass
class Secured:
    server: HttpServer
    keys: Any  # fastmcp's RSAKeyPair
    other_keys: Any
    jwks: JwksServer
    repo: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def jwt(self, **overrides: Any) -> str:
        args: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "kid": KID}
        args.update(overrides)
        keys = args.pop("keys", self.keys)
        return str(keys.create_token(**args))


@pytest.fixture(scope="module")
def secured(
    pg_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    """One server with both token kinds configured and one allowed host."""
    from fastmcp.server.auth.providers.jwt import RSAKeyPair

    keys, other_keys = RSAKeyPair.generate(), RSAKeyPair.generate()
    tmp = tmp_path_factory.mktemp("secured")
    url = pg_cluster.create_database("t_" + uuid.uuid4().hex[:12])
    migrate(url)
    repo = write_repo(tmp)
    with FakeOllama() as ollama, JwksServer([rsa_jwk(keys.public_key, KID)]) as jwks:
        env = server_env(
            REGISTRY_DATABASE_URL=url,
            OLLAMA_BASE_URL=ollama.url,
            CODEBASE_ROOTS=str(tmp),
            CODEBASE_INDEX_WORKERS="1",
            CODEBASE_LOG_LEVEL="debug",  # the most a log could say about a token
            MCP_AUTH_TOKENS=f"{TOKEN_A},{TOKEN_B}",
            MCP_AUTH_JWKS_URI=jwks.url,
            MCP_AUTH_ISSUER=ISSUER,
            MCP_AUTH_AUDIENCE=AUDIENCE,
            MCP_ALLOWED_HOSTS=CONFIGURED_HOST,
        )
        with running_servers(env, tmp / "logs") as (server,):
            yield Secured(server, keys, other_keys, jwks, repo)


def _post_initialize(secured: Secured, token: str | None = None, **headers: str) -> httpx.Response:
    sent = dict(MCP_HEADERS)
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers)
    return httpx.post(f"{secured.base}/mcp", json=INITIALIZE, headers=sent, timeout=10)


def test_a_foreign_host_is_refused_even_with_a_valid_token(secured: Secured) -> None:
    """DNS rebinding: a page on attacker.example that resolves to us sends its own Host."""
    resp = _post_initialize(secured, TOKEN_A, Host="attacker.example")
    assert resp.status_code == 421
    resp = _post_initialize(secured, TOKEN_A, Host=f"attacker.example:{secured.server.port}")
    assert resp.status_code == 421
    # /health is host-checked too: it names the database and the embedder.
    resp = httpx.get(f"{secured.base}/health", headers={"Host": "attacker.example"})
    assert resp.status_code == 421


def test_a_foreign_origin_is_refused(secured: Secured) -> None:
    resp = _post_initialize(secured, TOKEN_A, Origin="http://attacker.example")
    assert resp.status_code == 403
    # A page on this machine (an MCP inspector on localhost) may talk to a local server.
    resp = _post_initialize(secured, TOKEN_A, Origin="http://localhost:6274")
    assert resp.status_code == 200


def test_loopback_and_configured_hosts_are_served(secured: Secured) -> None:
    port = secured.server.port
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        CONFIGURED_HOST,
        f"{CONFIGURED_HOST}:80",
    ):
        resp = httpx.get(f"{secured.base}/health", headers={"Host": host})
        assert resp.status_code == 200, host
        resp = _post_initialize(secured, TOKEN_A, Host=host)
        assert resp.status_code == 200, host


def test_health_answers_probes_without_a_token(secured: Secured) -> None:
    resp = httpx.get(f"{secured.base}/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


def test_no_token_or_a_wrong_token_gets_401(secured: Secured) -> None:
    assert _post_initialize(secured).status_code == 401
    assert _post_initialize(secured, "not-" + TOKEN_A).status_code == 401
    resp = _post_initialize(secured, TOKEN_A, Authorization=f"Basic {TOKEN_A}")
    assert resp.status_code == 401
    assert _post_initialize(secured, TOKEN_B).status_code == 200


async def _fastmcp_search(url: str, token: str | None, repo: Path, query: str) -> dict[str, Any]:
    from fastmcp import Client

    async with Client(url, auth=token) as client:
        tools = {t.name for t in await client.list_tools()}
        assert "search_code" in tools
        job = await client.call_tool("index_repository", {"path": str(repo), "wait": True})
        assert job.structured_content is not None
        assert job.structured_content["state"] == "completed", job.structured_content
        result = await client.call_tool("search_code", {"query": query})
        assert result.structured_content is not None
        return dict(result.structured_content)


def test_the_right_token_works_with_fastmcp_client(secured: Secured) -> None:
    found = anyio.run(_fastmcp_search, secured.server.url, TOKEN_A, secured.repo, "parse_date")
    assert any(r["symbol"] == "parse_date" for r in found["results"]), found


async def _sdk_session(url: str, token: str | None, statuses: list[int]) -> list[str]:
    """List tools and call one through the official SDK's streamable-HTTP client;
    `statuses` collects every HTTP status the client saw."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30, event_hooks={"response": [record]}) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        listed = await session.call_tool("list_repositories", {})
        assert not listed.is_error
        return sorted(t.name for t in tools.tools)


def test_the_right_token_works_with_the_official_sdk_and_no_token_fails(secured: Secured) -> None:
    statuses: list[int] = []
    names = anyio.run(_sdk_session, secured.server.url, TOKEN_B, statuses)
    assert "search_code" in names
    assert set(statuses) <= {200, 202}, statuses
    statuses.clear()
    with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the 401 in a group
        anyio.run(_sdk_session, secured.server.url, None, statuses)
    assert statuses == [401]


def test_jwts_from_the_jwks_url(secured: Secured) -> None:
    assert _post_initialize(secured, secured.jwt()).status_code == 200
    assert secured.jwks.fetches >= 1, "the keys come from the JWKS URL"
    for bad in (
        secured.jwt(expires_in_seconds=-60),
        secured.jwt(audience="another-app"),
        secured.jwt(issuer="https://evil.example"),
        secured.jwt(keys=secured.other_keys),  # same kid, a key the JWKS does not hold
    ):
        assert _post_initialize(secured, bad).status_code == 401
    names = anyio.run(_sdk_session, secured.server.url, secured.jwt(), [])
    assert "index_repository" in names


def test_tokens_never_reach_the_log(secured: Secured) -> None:
    jwt = secured.jwt()
    expired = secured.jwt(expires_in_seconds=-60)
    for token in (TOKEN_A, "wrong-" + TOKEN_B, jwt, expired):
        _post_initialize(secured, token)
    log = secured.server.log_text()
    assert "static bearer token" in log, "the start-up line says how requests authenticate"
    for secret in (TOKEN_A, TOKEN_B, jwt, expired, jwt.split(".")[2]):
        assert secret not in log


# --- refusing an open port -------------------------------------------------------------


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codebase_mcp", "serve", "--transport", "http"],
        env=server_env(REGISTRY_DATABASE_URL="postgresql://u:pw@127.0.0.1:9/db", **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_open_port_without_authentication_exits_78(tmp_path: Path) -> None:
    done = _serve(tmp_path, MCP_HOST="0.0.0.0")
    assert done.returncode == 78, done.stderr
    assert "MCP_AUTH_TOKENS" in done.stderr
    assert "MCP_AUTH_DISABLED=true" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_bad_token_settings_exit_78_without_showing_the_token(tmp_path: Path) -> None:
    done = _serve(tmp_path, MCP_HOST="127.0.0.1", MCP_AUTH_TOKENS="short-secret")
    assert done.returncode == 78, done.stderr
    assert "MCP_AUTH_TOKENS" in done.stderr
    assert "short-secret" not in done.stderr


def test_stdio_needs_no_authentication_settings(tmp_path: Path) -> None:
    """Bad http-only settings do not concern stdio: it fails on the unreachable database
    (69), not on the token (78)."""
    done = subprocess.run(
        [sys.executable, "-m", "codebase_mcp", "serve"],
        env=server_env(
            REGISTRY_DATABASE_URL="postgresql://u:pw@127.0.0.1:9/db",
            MCP_AUTH_TOKENS="short",
            MCP_HOST="0.0.0.0",
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 69, done.stderr
    assert "MCP_AUTH" not in done.stderr


def test_auth_disabled_serves_an_open_address(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    migrate(pg_url)
    env = server_env(
        REGISTRY_DATABASE_URL=pg_url,
        OLLAMA_BASE_URL=fake_ollama.url,
        CODEBASE_ROOTS=str(tmp_path),
        MCP_HOST="0.0.0.0",
        MCP_AUTH_DISABLED="true",
    )
    with running_servers(env, tmp_path / "logs") as (server,):
        resp = httpx.post(server.url, json=INITIALIZE, headers=MCP_HEADERS, timeout=10)
        assert resp.status_code == 200
        assert "auth" in server.log_text() and "disabled" in server.log_text()
