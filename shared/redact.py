"""Keep credentials out of logs and error messages.

The robust way: take the password(s) out of the configured connection string, then replace every
form they can take (as written, decoded, URL-encoded, libpq-quoted, repr/JSON-escaped) in any text
before it leaves the process. Parsing the text that might hold them instead would miss the forms
libpq and psycopg quote in their own errors.
"""

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

MASK = "***"

# A URL's userinfo password, read up to the last '@' so that an unencoded '@', '/' or '?' in it
# (which urlsplit would cut short) still counts as part of the password.
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^:@/]*:(?P<password>.*)@", re.DOTALL)

_SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.\-]*://")
# Found anywhere, not only where a well-formed string would have a keyword: a malformed string
# (the one whose error may quote it) still has its password found.
_PASSWORD_KEYWORD = re.compile(r"password\s*=\s*", re.IGNORECASE)

# Secrets already seen by this process (the database DSN), for error paths that are not handed
# the DSN (psycopg errors raised on an open connection).
_known_secrets: set[str] = set()


def dsn_passwords(dsn: str) -> set[str]:
    """Every password a postgresql:// URL or libpq key=value string carries, as written and decoded."""
    found = _url_passwords(dsn) if _SCHEME.match(dsn) else _keyword_passwords(dsn)
    return {secret for secret in found if secret}


def _url_passwords(url: str) -> set[str]:
    found: set[str] = set()
    if match := _URL_PASSWORD.match(url):
        found.add(match["password"])  # urlsplit's password is a prefix of this one: not needed
    try:
        parts = urlsplit(url)
        if parts.password and not match:
            found.add(parts.password)
        query = parts.query
    except ValueError:  # e.g. an unbalanced '[' in the host
        query = url.partition("?")[2]
    for chunk in query.split("&"):
        key, _, value = chunk.partition("=")
        if unquote_plus(key).strip().lower() == "password":
            found.add(value)
    return found | {unquote(secret) for secret in found} | {unquote_plus(secret) for secret in found}


def _keyword_passwords(dsn: str) -> set[str]:
    """Password values of a key=value string read with libpq's rules, leniently when malformed.

    libpq: a value is either unquoted (ends at whitespace) or single-quoted (ends at an unescaped
    quote); a backslash escapes the next character in both. An unterminated quote runs to the end.
    https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-KEYWORD-VALUE
    """
    found: set[str] = set()
    for match in _PASSWORD_KEYWORD.finditer(dsn):
        found |= set(_read_value(dsn, match.end()))
    return found


def _read_value(dsn: str, start: int) -> tuple[str, str]:
    """(the value as written, the value libpq reads)."""
    quoted = dsn.startswith("'", start)
    position = start + 1 if quoted else start
    value: list[str] = []
    while position < len(dsn):
        char = dsn[position]
        if char == "\\" and position + 1 < len(dsn):
            value.append(dsn[position + 1])
            position += 2
            continue
        if (quoted and char == "'") or (not quoted and char.isspace()):
            position += quoted
            break
        value.append(char)
        position += 1
    return dsn[start:position], "".join(value)


def _forms(secret: str) -> set[str]:
    """The ways a password can be spelled in a connection string, a log line or an error."""
    libpq_quoted = secret.replace("\\", "\\\\").replace("'", "\\'")
    return {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        libpq_quoted,
        f"'{libpq_quoted}'",
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of every secret replaced by '***' (longest first, so none is left half)."""
    forms = {form for secret in secrets if secret for form in _forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def redact_url(url: str) -> str:
    """The URL or key=value connection string with any password replaced by '***'."""
    return redact_secrets(url, dsn_passwords(url))


def remember_secrets(dsn: str) -> None:
    """Note the passwords of a connection string this process uses, for redact_known()."""
    _known_secrets.update(dsn_passwords(dsn))


def remember_secret(secret: str) -> None:
    """Note a secret this process sends (an API key), for redact_known()."""
    if secret:
        _known_secrets.add(secret)


def redact_known(text: str) -> str:
    """`text` without any password of a connection string this process has used."""
    return redact_secrets(text, _known_secrets)


_ANY_URL_PASSWORD = re.compile(r"(\w+://[^:/?#\s@]*:)\S*(@)")  # greedy: a raw '@' in a password
_PASSWORD_SETTING = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Free text (an unexpected error) without known passwords, URL passwords or password=... values."""
    text = redact_known(text)
    return _PASSWORD_SETTING.sub(rf"\1{MASK}", _ANY_URL_PASSWORD.sub(rf"\1{MASK}\2", text))
