"""Keep secrets out of log lines and error messages."""

from __future__ import annotations

import re

# scheme://user:password@host → scheme://user:***@host (also for URLs inside longer text).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)")


def redact_url(text: str) -> str:
    """Mask the password of every URL in `text`."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def redact_secret(text: str, secret: str | None) -> str:
    """Mask URL passwords and every literal occurrence of `secret`."""
    text = redact_url(text)
    if secret:
        text = text.replace(secret, "***")
    return text
