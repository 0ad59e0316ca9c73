"""`codebase-mcp serve`: the MCP tools over one Engine (server), the stdio wire, signals
and teardown (lifecycle), the HTTP transport's guard and authentication (http_security)
and readiness for the supervisor (notify). Only the command line imports it."""
