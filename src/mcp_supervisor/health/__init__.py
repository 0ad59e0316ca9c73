"""Health: the heartbeat the supervisor writes, the sd_notify socket the child speaks to,
the per-instance runtime directory that holds both, and `--check`, the probe that judges
the heartbeat (`verdict`).

`check`, `verdict` and `runtime` are on the probe's path, which runs every few seconds in
every container: this file imports nothing.
"""
