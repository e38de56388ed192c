"""Errors raised by the groupcast client and channel layer."""

from __future__ import annotations

try:  # Channels is optional for the plain client.
    from channels.exceptions import ChannelFull as _ChannelFull
except ImportError:  # pragma: no cover - exercised only without channels

    class _ChannelFull(Exception):  # type: ignore[no-redef]
        """Stands in for channels.exceptions.ChannelFull."""


class GroupcastError(Exception):
    """A request the server refused or could not answer.

    ``code`` is the server's error code (see the README's table), or
    ``unavailable`` for network failures; ``status`` is the HTTP status, 0
    when no answer came.
    """

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"groupcast: {code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status


class Unavailable(GroupcastError, _ChannelFull):
    """The server could not take the message (503, a network error, or too
    many calls in flight), after the configured retries.

    It is a ``channels.exceptions.ChannelFull``, so code written for
    Channels' own layers handles it unchanged.
    """


class Unauthorized(GroupcastError):
    """A missing or wrong API key (401)."""


class NotFound(GroupcastError):
    """No such thing: history or presence off for the group (404)."""


class TooLarge(GroupcastError):
    """The body is over the server's MAX_BODY_BYTES (413)."""


class Unsupported(NotImplementedError):
    """An operation of Channels' layer API that has no meaning here: the
    groupcast server owns the sockets, so a Django process never has a
    channel of its own to receive on."""


def from_status(status: int, code: str, message: str) -> GroupcastError:
    """Maps an HTTP answer to the error class callers catch."""
    if status == 503 or code == "unavailable":
        return Unavailable(code or "unavailable", message, status)
    if status == 401:
        return Unauthorized(code or "unauthorized", message, status)
    if status == 404:
        return NotFound(code or "not_found", message, status)
    if status == 413:
        return TooLarge(code or "too_large", message, status)
    return GroupcastError(code or "http_error", message, status)
