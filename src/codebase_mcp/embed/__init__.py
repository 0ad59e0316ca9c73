"""Embedders: the HTTP clients (Ollama, OpenAI-compatible) and the choice of provider
(clients), and the in-process model (local_embed). No database; imports only the plain
modules at the top of the package."""
