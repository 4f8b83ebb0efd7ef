"""Credentials masked out of URIs and of any text that embeds them (error messages, log lines, metadata)."""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ or scheme://token@ (and user:password@host without a scheme, as in a Ray address).
# A password runs to the last "@" before the path, as urllib reads it; failing that, to the next "@" (SQLAlchemy
# allows "/" in one). Masking too much of a malformed URI is preferred to showing part of a password.
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://|(?<![\w.%+:/@-])(?=[\w.%+-]+:[^\s/@'\"]+@[\w\[]))"
    r"(?P<user>[^\s:/@?#'\"]*)(?::(?P<password>[^\s/'\"]*|[^\s@'\"]*))?@"
)
# name=value after "?", "&" or ";" (URL query) or at a word start (libpq's "host=... password=...").
_PARAMETER = re.compile(r"(?P<lead>(?:^|[?&;\s])(?P<name>[\w.\-\[\]]+)=)(?P<value>[^&;#\s'\"]+)")
# Parameter names whose value is a credential: passwords, tokens, keys, signatures (X-Amz-*, X-Goog-*, Azure's sig).
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|credential|signature|auth|key$|^sig$|^x-amz-|^x-goog-", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` (a URI, or a message holding any number of them) with passwords, tokens and signatures masked."""

    def userinfo(match: re.Match) -> str:
        if match["password"] is None:
            return f"{match['scheme']}{MASK}@"  # a user part alone is a token (https://TOKEN@host)
        return f"{match['scheme']}{match['user']}:{MASK}@"

    def parameter(match: re.Match) -> str:
        return f"{match['lead']}{MASK}" if _SECRET_NAME.search(match["name"]) else match[0]

    return _PARAMETER.sub(parameter, _USERINFO.sub(userinfo, text))


class RedactedError(Exception):
    """Stands in for an error whose message may hold a credential: its type's name and its message, masked."""


def redacted_error(error: BaseException) -> RedactedError:
    """`error` and the chain of errors that led to it, as RedactedErrors with the same tracebacks, messages masked."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and not any(current is seen for seen in chain):
        chain.append(current)
        current = current.__cause__ if current.__cause__ is not None or current.__suppress_context__ else current.__context__
    redacted: RedactedError | None = None
    for original in reversed(chain):
        masked = RedactedError(redact(f"{type(original).__name__}: {original}")).with_traceback(original.__traceback__)
        masked.__cause__ = redacted
        redacted = masked
    assert redacted is not None
    return redacted
