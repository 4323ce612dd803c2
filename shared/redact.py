"""Keep credentials out of logs and error messages."""

import re
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The URL with any password replaced by '***'."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_URL_PASSWORD = re.compile(r"(\w+://[^:/?#\s@]*:)\S*(@)")  # greedy: a raw '@' in a password
_PASSWORD_SETTING = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Free text (an error message) with URL passwords and password=... settings replaced by '***'."""
    return _PASSWORD_SETTING.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\2", text))
