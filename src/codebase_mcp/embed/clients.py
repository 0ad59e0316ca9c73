"""Embedding clients: Ollama's `/api/embed` and OpenAI-compatible `/v1/embeddings`
(the local model is in local_embed.py; `create_embedder` picks one).

Batched input, a semaphore bounding concurrent requests, retries with exponential backoff
and jitter on transient failures (connection errors, timeouts, 429 and 5xx), a clear error
when the model is missing, and nomic-embed-text's task prefixes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import httpx

from codebase_mcp.config import Settings
from codebase_mcp.errors import EmbedderError, EmbedderUnavailableError, ModelMissingError
from mcp_supervisor.redact import mask_url

_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def task_prefixes(model: str) -> tuple[str, str]:
    """(document prefix, query prefix): nomic-embed-text was trained with task prefixes
    and retrieves markedly worse without them; other models get none."""
    base = model.rsplit("/", 1)[-1].split(":", 1)[0]
    if base.startswith("nomic-embed-text"):
        return "search_document: ", "search_query: "
    return "", ""


def backoff_delay(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Full-jitter exponential backoff for retry number `attempt` (0-based)."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def batches(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class Embedder(Protocol):
    model: str
    # None until the first answer says (an HTTP model whose size was not configured).
    dimensions: int | None

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def embed_query(self, text: str) -> list[float]: ...

    async def check(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class _Api:
    """What differs between the two HTTP APIs."""

    path: str
    kind: str  # "ollama" | "openai"

    def request(self, model: str, texts: Sequence[str]) -> dict[str, Any]:
        if self.kind == "ollama":
            return {"model": model, "input": list(texts), "truncate": True}
        return {"model": model, "input": list(texts), "encoding_format": "float"}

    def vectors(self, body: Any) -> list[list[float]]:
        if self.kind == "ollama":
            return [list(map(float, v)) for v in body["embeddings"]]
        rows = sorted(body["data"], key=lambda d: d["index"])
        return [list(map(float, d["embedding"])) for d in rows]


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    return str(err or body)[:200]


class HttpEmbedder:
    """An embedder speaking one of the two HTTP APIs (see `create_embedder`)."""

    def __init__(
        self,
        *,
        base_url: str,
        api: _Api,
        model: str,
        dimensions: int | None,
        batch_size: int = 64,
        concurrency: int = 4,
        timeout: float = 60.0,
        retries: int = 4,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.retries = retries
        self.doc_prefix, self.query_prefix = task_prefixes(model)
        self._semaphore = anyio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers=headers,
            transport=transport,
            trust_env=False,  # never route to a proxy from the environment
        )

    @property
    def where(self) -> str:
        return host_port(self.base_url)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed chunk texts: batches of `batch_size`, at most `concurrency` in flight."""
        prefixed = [self.doc_prefix + t for t in texts] if self.doc_prefix else list(texts)
        parts = batches(prefixed, self.batch_size)
        results: list[list[list[float]]] = [[] for _ in parts]

        failures: list[EmbedderError] = []

        async def run(i: int, batch: Sequence[str], scope: anyio.CancelScope) -> None:
            try:
                async with self._semaphore:
                    results[i] = await self._embed(batch, self.retries)
            except EmbedderError as exc:  # the first failure decides; stop the others
                failures.append(exc)
                scope.cancel()

        async with anyio.create_task_group() as tg:
            for i, batch in enumerate(parts):
                tg.start_soon(run, i, batch, tg.cancel_scope)
        if failures:
            raise failures[0]
        return [v for part in results for v in part]

    async def embed_query(self, text: str) -> list[float]:
        # Outside the semaphore, one retry: a search must not queue behind indexing.
        vectors = await self._embed([self.query_prefix + text], min(self.retries, 1))
        return vectors[0]

    async def check(self) -> dict[str, Any]:
        """Embed a probe word: proves the API answers and the model is present."""
        try:
            await self._embed(["ping"], 0)
        except EmbedderError as exc:
            return {
                "ok": False,
                "model": self.model,
                "url": mask_url(self.base_url),
                "error": str(exc),
            }
        return {"ok": True, "model": self.model, "url": mask_url(self.base_url)}

    async def _embed(self, texts: Sequence[str], retries: int) -> list[list[float]]:
        last = "no attempt"
        for attempt in range(retries + 1):
            if attempt:
                await anyio.sleep(backoff_delay(attempt - 1))
            try:
                response = await self._client.post(
                    self.api.path, json=self.api.request(self.model, texts)
                )
            except httpx.TimeoutException:
                last = "timed out"
                continue
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code == 200:
                return self._vectors(response, len(texts))
            detail = _error_text(response)
            if response.status_code == 404:
                raise ModelMissingError(
                    f"model {self.model} is not present at {self.where} ({detail}); "
                    f"run `ollama pull {self.model}` or let mcp-supervisor pull it"
                )
            if response.status_code in (401, 403):
                raise EmbedderError(
                    f"the embedding server at {self.where} refused the credentials "
                    f"(HTTP {response.status_code}): {detail}"
                )
            last = f"HTTP {response.status_code}: {detail}"
            if response.status_code not in _TRANSIENT_STATUS:
                raise EmbedderError(f"embedding failed at {self.where}: {last}")
        raise EmbedderUnavailableError(
            f"embedder at {self.where} unavailable after {retries + 1} attempt(s): {last}"
        )

    def _vectors(self, response: httpx.Response, expected: int) -> list[list[float]]:
        try:
            vectors = self.api.vectors(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderError(f"malformed embedding response from {self.where}: {exc}") from None
        if len(vectors) != expected:
            raise EmbedderError(
                f"the embedder at {self.where} returned {len(vectors)} vectors for {expected} texts"
            )
        if self.dimensions is None and vectors:  # learned from the first answer
            self.dimensions = len(vectors[0])
        for v in vectors:
            if len(v) != self.dimensions:
                raise EmbedderError(
                    f"model {self.model} returns {len(v)}-dimensional vectors where "
                    f"{self.dimensions} were expected (EMBEDDING_DIMENSIONS, or its earlier "
                    "answers): set EMBEDDING_DIMENSIONS to the model's size, or leave it unset"
                )
        return vectors


def create_embedder(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> Embedder | None:
    """The embedder of the chosen provider (`Settings.provider`); None: full-text only."""
    provider = settings.provider
    if provider is None:
        return None
    if provider == "local":
        from codebase_mcp.embed.local_embed import LocalEmbedder

        return LocalEmbedder()
    if provider == "openai":
        api = _Api("/embeddings", "openai")
        base_url = settings.openai_base_url
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    else:
        api = _Api("/api/embed", "ollama")
        base_url = settings.ollama_base_url
        key = None
    return HttpEmbedder(
        base_url=base_url,
        api=api,
        model=settings.model_name or settings.ollama_embedding_model,
        dimensions=settings.embedding_dimensions,
        batch_size=settings.embed_batch_size,
        concurrency=settings.embed_concurrency,
        timeout=settings.embed_timeout,
        retries=settings.embed_retries,
        api_key=key,
        transport=transport,
    )
