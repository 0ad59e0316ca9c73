"""A small local HTTP server that speaks the Ollama endpoints the project uses.

Ollama cannot run on these machines. This server answers `/api/version`, `/api/tags`,
`/api/embed`, `/api/pull` (streamed NDJSON progress, like the real one) and the
OpenAI-compatible `/v1/embeddings`. Embeddings come from `embed_fn`: by default a
deterministic hashed bag of words, so texts that share words are near each other;
the retrieval benchmark plugs a real model in instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EmbedFn = Callable[[Sequence[str]], list[list[float]]]

_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")


def hashed_bag_of_words(dims: int) -> EmbedFn:
    """Deterministic, normalised embeddings: one hashed bucket per (lower-cased) word."""

    def embed(texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vec = [0.0] * dims
            for word in _WORD.findall(text):
                h = int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=8).digest())
                vec[h % dims] += 1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out

    return embed


@dataclass
class FakeOllama:
    """State of the fake server; tests change it while it runs."""

    models: set[str] = field(default_factory=lambda: {"nomic-embed-text:latest"})
    dims: int = 768
    embed_fn: EmbedFn | None = None
    pull_steps: int = 5
    pull_delay: float = 0.01
    embed_delay: float = 0.0
    fail_embed: bool = False
    requests: list[tuple[str, Any]] = field(default_factory=list)
    embedded_texts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def has_model(self, name: str) -> bool:
        full = name if ":" in name else f"{name}:latest"
        return full in self.models

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        fn = self.embed_fn or hashed_bag_of_words(self.dims)
        with self.lock:
            self.embedded_texts.extend(texts)
        return fn(texts)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeOllama:
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(state: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY, as Ollama's Go server has: headers and body go out in two writes, and
        # Nagle plus the client's delayed ACK stalled a quick follow-up request by 40 ms.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b"{}"
            return json.loads(raw or b"{}")

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append(("GET " + self.path, None))
            if self.path in ("/", ""):
                body = b"Ollama is running"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/api/version":
                self._json(200, {"version": "0.12.0-fake"})
            elif self.path == "/api/tags":
                models = [
                    {"name": m, "model": m, "size": 274302450, "digest": "0" * 64}
                    for m in sorted(state.models)
                ]
                self._json(200, {"models": models})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = self._body()
            with state.lock:
                state.requests.append(("POST " + self.path, body))
            if self.path == "/api/embed":
                self._embed_ollama(body)
            elif self.path == "/v1/embeddings":
                self._embed_openai(body)
            elif self.path == "/api/pull":
                self._pull(body)
            else:
                self._json(404, {"error": "not found"})

        def _inputs(self, raw: Any) -> list[str]:
            return [raw] if isinstance(raw, str) else list(raw)

        def _embed_ollama(self, body: dict[str, Any]) -> None:
            model = str(body.get("model", ""))
            if not state.has_model(model):
                self._json(404, {"error": f'model "{model}" not found, try pulling it first'})
                return
            if state.fail_embed:
                self._json(500, {"error": "embedding failed"})
                return
            if state.embed_delay:
                time.sleep(state.embed_delay)
            vectors = state.embed(self._inputs(body.get("input", [])))
            self._json(200, {"model": model, "embeddings": vectors})

        def _embed_openai(self, body: dict[str, Any]) -> None:
            model = str(body.get("model", ""))
            if not state.has_model(model):
                self._json(404, {"error": {"message": f"model {model} not found"}})
                return
            if state.fail_embed:
                self._json(500, {"error": {"message": "embedding failed"}})
                return
            vectors = state.embed(self._inputs(body.get("input", [])))
            data = [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ]
            self._json(200, {"object": "list", "data": data, "model": model})

        def _pull(self, body: dict[str, Any]) -> None:
            name = str(body.get("model") or body.get("name") or "")
            full = name if ":" in name else f"{name}:latest"
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            total = 274302450
            chunk({"status": "pulling manifest"})
            for i in range(1, state.pull_steps + 1):
                time.sleep(state.pull_delay)
                chunk(
                    {
                        "status": "pulling 970aa74c0a90",
                        "digest": "sha256:970a",
                        "total": total,
                        "completed": total * i // state.pull_steps,
                    }
                )
            chunk({"status": "verifying sha256 digest"})
            chunk({"status": "writing manifest"})
            with state.lock:
                state.models.add(full)
            chunk({"status": "success"})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def main() -> None:
    """Run standalone (for the container test and benchmarks): fake_ollama.py [PORT] [DIMS]."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 11434
    dims = int(sys.argv[2]) if len(sys.argv) > 2 else 768
    server = FakeOllama(dims=dims).start("127.0.0.1", port)
    print(f"fake ollama on {server.url}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
