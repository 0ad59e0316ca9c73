"""What the supervisor waits for when MCP_SUPERVISOR_WAIT_FOR is unset: Ollama only when
it is asked for. A fresh `scripts/run` without Ollama must not wait 60 s for it and exit 69;
an explicit list keeps the strict behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_supervisor.config import default_wait_for, load_settings


@pytest.mark.parametrize(
    ("ollama_url_set", "provider", "expected"),
    [
        (False, None, ("postgres",)),
        (False, "auto", ("postgres",)),
        (False, "local", ("postgres",)),
        (False, "openai", ("postgres",)),
        (False, "ollama", ("postgres", "ollama")),
        (False, " Ollama ", ("postgres", "ollama")),
        (True, None, ("postgres", "ollama")),
        (True, "auto", ("postgres", "ollama")),
        # The URL says where Ollama is, the provider that the server will not use it.
        (True, "local", ("postgres",)),
        (True, "openai", ("postgres",)),
        (True, "ollama", ("postgres", "ollama")),
    ],
)
def test_default_wait_for(
    ollama_url_set: bool, provider: str | None, expected: tuple[str, ...]
) -> None:
    assert default_wait_for(ollama_url_set=ollama_url_set, embedding_provider=provider) == expected


@pytest.mark.usefixtures("clean_env")
class TestSettings:
    def test_nothing_configured_waits_for_postgres_only(self) -> None:
        spec = load_settings().to_spec(None)
        assert spec.wait_for == ("postgres",)
        assert spec.embedded_postgres  # no URL: the bundled PostgreSQL still starts

    def test_an_ollama_url_brings_ollama_in(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OLLAMA_BASE_URL", "http://ollama:11434")
        assert load_settings().to_spec(None).wait_for == ("postgres", "ollama")

    def test_the_ollama_provider_brings_ollama_in(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("EMBEDDING_PROVIDER", "ollama")
        assert load_settings().to_spec(None).wait_for == ("postgres", "ollama")

    def test_an_ollama_url_in_the_env_file_counts(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env_file = tmp_path / "settings.env"
        env_file.write_text("OLLAMA_BASE_URL=http://gpu-box:11434\n")
        spec = load_settings(env_file=str(env_file)).to_spec(None)
        assert spec.wait_for == ("postgres", "ollama")
        assert spec.ollama_base_url == "http://gpu-box:11434"

    def test_an_explicit_list_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MCP_SUPERVISOR_WAIT_FOR", "postgres,ollama")
        assert load_settings().to_spec(None).wait_for == ("postgres", "ollama")
        monkeypatch.setenv("OLLAMA_BASE_URL", "http://ollama:11434")
        monkeypatch.setenv("MCP_SUPERVISOR_WAIT_FOR", "postgres")
        assert load_settings().to_spec(None).wait_for == ("postgres",)
        assert load_settings({"wait_for": "none"}).to_spec(None).wait_for == ()

    def test_the_supervisor_does_not_validate_the_server_s_provider(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The server names a bad EMBEDDING_PROVIDER (exit 78); the supervisor only reads it.
        monkeypatch.setenv("EMBEDDING_PROVIDER", "cohere")
        assert load_settings().to_spec(None).wait_for == ("postgres",)
