"""`python -m codebase_mcp ...` runs the codebase-mcp command."""

from codebase_mcp.cli import main

raise SystemExit(main())
