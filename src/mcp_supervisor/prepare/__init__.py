"""Preparing: wait for the dependencies (`deps`, with `backoff`), then migrate (`migrate`).

`steps` runs them in a short-lived child of PID 1 (`python -m mcp_supervisor.prepare.steps`)
or in the `wait` and `migrate` subcommands' own process, so asyncpg, httpx and SQLAlchemy
never load into PID 1.
"""
