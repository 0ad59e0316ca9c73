"""Entry of the lean PID-1 process: `cli.main` re-executes itself into
`python -m mcp_supervisor.pid1 --spec-fd N` once the settings are valid."""

import sys

# structlog imports rich (pretty tracebacks) and greenlet (context locals) whenever they
# are installed, and fastmcp and SQLAlchemy install them: ~8 MB resident in PID 1 for
# features it never uses. Mark them absent before anything imports structlog.
for _name in ("rich", "greenlet"):
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]

from mcp_supervisor.pid1.runner import main  # noqa: E402

# The runner ends the process itself once everything is down (no interpreter teardown).
sys.exit(main(hard_exit=True))
