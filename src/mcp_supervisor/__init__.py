"""mcp-supervisor: a small, correct container PID 1 for the codebase MCP server.

    cli, __main__     the command line; `--check` is dispatched before anything else loads
    pid1/             the PID-1 core: runner, policy, restart, signals, process
    health/           heartbeat, sd_notify socket, runtime directory, the `--check` probe
    prepare/          waiting for the dependencies, then migrating; never in PID 1
    pg/               the embedded PostgreSQL, one per data directory, shared by its users
    config, spec      the settings, validated once into a plain `RunSpec`
    state             what the supervisor knows about itself (plain data)
    log, redact       logging and redaction, which `codebase_mcp` imports too
    exitcodes         the exit codes (the README's table), PID 1's and prepare's alike

Imports go down only: cli may import any subpackage, pid1 imports health and pg, prepare
imports pg (pid1 runs prepare as a child, by module name), health and pg import no other
subpackage; all may import the plain modules at the bottom (config, spec, state, log,
redact, exitcodes), which import no subpackage. Nothing here imports `codebase_mcp`. Every
`__init__` is a docstring only: importing a subpackage costs `--check` and PID 1 nothing.
"""

__version__ = "0.1.0"
