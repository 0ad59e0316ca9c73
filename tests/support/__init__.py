"""Test helpers: real PostgreSQL from the bundled binaries, a local Ollama-API server."""
