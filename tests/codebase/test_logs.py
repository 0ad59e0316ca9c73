"""The server's log lines: stderr only, and no URL password, wherever the URL sits."""

from __future__ import annotations

import pytest
import structlog

from codebase_mcp.logs import configure_logging


def test_passwords_are_masked_in_urls_inside_any_value(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.get_logger("t").warning(
        "index job failed",
        error="cannot connect to postgresql://u:s3cret@db:5432/x: connection refused",
        url="postgresql+asyncpg://u:s3cret@db/x",
    )
    out, err = capsys.readouterr()
    assert out == ""  # stdout belongs to MCP
    assert "s3cret" not in err
    assert "postgresql://u:***@db:5432/x: connection refused" in err
    assert "postgresql+asyncpg://u:***@db/x" in err
