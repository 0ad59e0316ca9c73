"""The embedded PostgreSQL: what to run (`embedded`), the files through which every user of
a data directory shares one running PostgreSQL (`share`), and the process that runs it
(`keeper`, `python -m mcp_supervisor.pg.keeper`). Standard library only.
"""
