"""mcp-supervisor: a small, correct container PID 1 for the codebase MCP server."""

__version__ = "0.1.0"
