"""codebase-mcp: semantic code search for AI assistants over MCP."""

__version__ = "0.1.0"
