"""Keep secrets out of log lines and error messages."""

from __future__ import annotations

import re

# scheme://user:password@host → scheme://user:***@host (also for URLs inside longer text).
# The password runs to the last "@" before the host, as a URL parser reads it: one typed
# unencoded with an "@" in it is masked whole.
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>\S*?)"
    r"(?=@[^@\s/?#'\"]*(?:[/?#'\"),;]|\s|$))"
)


def redact_url(text: str) -> str:
    """Mask the password of every URL in `text`."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def redact_secret(text: str, secret: str | None) -> str:
    """Mask URL passwords and every literal occurrence of `secret`."""
    text = redact_url(text)
    if secret:
        text = text.replace(secret, "***")
    return text


def mask_url(url: str) -> str:
    """One URL with its password replaced by ***, read the way a URL parser reads it (a
    password holding "@" is masked whole); safe for logs and error messages."""
    from urllib.parse import urlsplit, urlunsplit  # only where a URL is shown

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is None:
        return url
    userinfo = f"{parts.username or ''}:***@"
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, userinfo + host, parts.path, parts.query, parts.fragment))
