"""The PID-1 core: the lean runner process, its signals, children and exit status.

`python -m mcp_supervisor.pid1 --spec-fd N` (`__main__`) is what `cli` re-executes into:
`runner` carries out the decisions of `policy` and `restart`, `signals` catches and
forwards, `process` spawns and reaps (`mcp_supervisor.exitcodes` maps a wait status to ours).
"""
