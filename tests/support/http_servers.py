"""Real `codebase-mcp serve` processes on the http transport, and a JSON Web Key Set
server, for the tests of the HTTP surface (auth, Host/Origin, replicas, the balancer)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support.pg import free_port


@dataclass
class HttpServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def server_env(**extra: str) -> dict[str, str]:
    """The test process's environment without supervisor, notify or http settings that
    would leak in, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "WATCHDOG_", "MCP_", "FASTMCP_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_server(env: Mapping[str, str], log: Path, port: int | None = None) -> HttpServer:
    port = port or free_port()
    full = dict(env)
    full.setdefault("MCP_TRANSPORT", "http")
    full["MCP_PORT"] = str(port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "codebase_mcp", "serve"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env=full,
    )
    return HttpServer(proc, port, log)


def wait_healthy(server: HttpServer, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=2)
            if resp.status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert server.proc.poll() is None, server.log_text()
        assert time.monotonic() < deadline, "no healthy server:\n" + server.log_text()
        time.sleep(0.1)


def stop_server(server: HttpServer) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    return server.proc.wait()


@contextmanager
def running_servers(
    env: Mapping[str, str], logs: Path, count: int = 1
) -> Iterator[list[HttpServer]]:
    """`count` servers with one environment (replicas), healthy, stopped on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    servers = [start_server(env, logs / f"server-{i}.log") for i in range(count)]
    try:
        for server in servers:
            wait_healthy(server)
        yield servers
    finally:
        for server in servers:
            stop_server(server)


# --- a JSON Web Key Set on a local port -------------------------------------------------


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def rsa_jwk(public_pem: str, kid: str) -> dict[str, Any]:
    """The public JWK (RFC 7517) of an RSA public key in PEM."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_pem.encode())
    assert isinstance(key, RSAPublicKey)
    numbers = key.public_numbers()
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": _b64url_uint(numbers.n),
        "e": _b64url_uint(numbers.e),
    }


class JwksServer:
    """Serves {"keys": [...]} at /jwks.json on 127.0.0.1, and counts the fetches."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
