"""`python -m mcp_supervisor` is `mcp-supervisor`."""

import sys

from mcp_supervisor.cli import main

sys.exit(main())
