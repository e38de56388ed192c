"""A client for groupcast's HTTP server API, blocking (:class:`Client`) and
async (:class:`AsyncClient`), over pooled keep-alive connections.

Every call is retried a bounded number of times on 503 and on network
errors when a retry cannot deliver twice: the request never reached the
server, the call is idempotent by nature (reads, membership, disconnects),
or it carries an idempotency key. Then it raises
:class:`~groupcast.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import quote, urlencode

from . import _http
from .errors import GroupcastError, Unavailable, from_status

__all__ = ["Client", "AsyncClient", "Policies", "valid_group", "valid_channel"]

_ID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def valid_group(name: object) -> bool:
    """Whether name is a groupcast group name: 1-100 ASCII letters, digits,
    '-', '_' and '.', no leading or trailing '.', no '..'."""
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        return False
    if name[0] == "." or name[-1] == "." or ".." in name:
        return False
    return all(c in _ID or c == "." for c in name)


def valid_channel(name: object) -> bool:
    """Whether name has the shape of a channel name, ``<node>.<connection>``."""
    if not isinstance(name, str):
        return False
    node, dot, conn = name.partition(".")
    return bool(dot) and 0 < len(node) <= 64 and 0 < len(conn) <= 64 and all(c in _ID for c in node + conn)


class Policies:
    """The server's GROUP_POLICIES, so that the client knows which groups
    keep history and so take an idempotency key: ``"chat.*=recoverable,
    price.*=latest"``; the first matching pattern wins."""

    def __init__(self, spec: str | None = None) -> None:
        self.rules: list[tuple[str, str]] = []
        for item in (spec or "").split(","):
            item = item.strip()
            if not item:
                continue
            pattern, eq, policy = item.partition("=")
            pattern, policy = pattern.strip(), policy.strip()
            if not eq or policy not in ("at-most-once", "recoverable", "latest"):
                raise ValueError(f"group policy {item!r} must be pattern=at-most-once|recoverable|latest")
            if pattern != "*" and not valid_group(pattern.removesuffix(".*")):
                raise ValueError(f"group policy pattern {pattern!r} must be a group name, * or a prefix ending in .*")
            self.rules.append((pattern, policy))

    def of(self, group: str) -> str:
        """The policy of group."""
        for pattern, policy in self.rules:
            if pattern in ("*", group) or pattern.endswith(".*") and group.startswith(pattern[:-1]):
                return policy
        return "at-most-once"

    def keeps_history(self, group: str) -> bool:
        """Whether group is recoverable or latest."""
        return self.of(group) != "at-most-once"


@dataclass
class _Call:
    """One API request and whether a retry after it may have arrived is safe."""

    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] | None = None
    idempotent: bool = False


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _seg(s: str) -> str:
    return quote(s, safe="")


def _group(group: str) -> str:
    if not valid_group(group):
        raise TypeError(f"invalid group name {group!r}: 1-100 ASCII letters, digits, -, _ and ., no leading, trailing or double .")
    return group


def _channel(channel: str) -> str:
    if not valid_channel(channel):
        raise TypeError(f"invalid channel name {channel!r}: a channel name is <node>.<connection>, from a welcome frame")
    return channel


class _API:
    """What both clients share: settings, the requests, the answers."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 5.0, retries: int = 2,
                 max_in_flight: int = 64, group_policies: str | None = None) -> None:
        """``url`` is the server's base URL (http://groupcast:8080);
        ``api_key`` its API_KEY, or None where the server answers loopback;
        ``timeout`` bounds one attempt and the wait for a slot, in seconds;
        ``retries`` how many times a failed call is tried again;
        ``max_in_flight`` the calls in flight at once (per event loop for
        async calls); ``group_policies`` the server's GROUP_POLICIES."""
        if retries < 0 or max_in_flight < 1 or timeout <= 0:
            raise ValueError("retries must be >= 0, max_in_flight >= 1, timeout > 0")
        headers = {"User-Agent": "groupcast-python/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._ep = _http.Endpoint(url, headers, timeout)
        self.retries = retries
        self.max_in_flight = max_in_flight
        self.policies = Policies(group_policies)
        self._sync = _http.SyncPool(self._ep, max_in_flight)

    # The requests.

    def _publish(self, group: str, data: Any, idempotency_key: str | None, exclude: str | None = None) -> _Call:
        _group(group)
        if idempotency_key is None and self.policies.keeps_history(group):
            idempotency_key = uuid.uuid4().hex
        headers = {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if exclude is not None:
            headers["Groupcast-Exclude"] = _channel(exclude)
        return _Call("POST", f"/api/groups/{group}/messages", _dumps(data), headers or None, idempotency_key is not None)

    def _send(self, channel: str, data: Any) -> _Call:
        return _Call("POST", f"/api/channels/{_channel(channel)}/messages", _dumps(data))

    def _batch(self, messages: Iterable[dict[str, Any]]) -> _Call:
        out = []
        for m in messages:
            m = dict(m)
            if "group" in m:
                _group(m["group"])
                if "idempotency_key" not in m and self.policies.keeps_history(m["group"]):
                    m["idempotency_key"] = uuid.uuid4().hex
                if "exclude" in m:
                    _channel(m["exclude"])
            elif "channel" in m:
                _channel(m["channel"])
            else:
                raise TypeError("a batch message needs a group or a channel")
            if "data" not in m:
                raise TypeError("a batch message needs data")
            out.append(m)
        if len(out) > 1000:
            raise ValueError("at most 1000 messages in one batch")
        # Retried when sent only if every group message has a key.
        safe = all("idempotency_key" in m for m in out)
        return _Call("POST", "/api/messages", _dumps({"messages": out}), None, safe)

    def _membership(self, method: str, group: str, channel: str) -> _Call:
        return _Call(method, f"/api/groups/{_group(group)}/channels/{_channel(channel)}", idempotent=True)

    def _disconnect(self, user: str | None, channel: str | None) -> _Call:
        if (user is None) == (channel is None):
            raise TypeError("disconnect needs a user or a channel")
        if channel is not None:
            return _Call("POST", f"/api/channels/{_channel(channel)}/disconnect", b"", idempotent=True)
        if not user:
            raise TypeError("user must be a non-empty string")
        return _Call("POST", f"/api/users/{_seg(str(user))}/disconnect", b"", idempotent=True)

    def _presence(self, group: str, limit: int | None, count_only: bool, by: str | None) -> _Call:
        q: dict[str, Any] = {}
        if limit is not None:
            q["limit"] = limit
        if count_only:
            q["count_only"] = 1
        if by is not None:
            q["by"] = by
        return _Call("GET", f"/api/groups/{_group(group)}/presence" + (f"?{urlencode(q)}" if q else ""), idempotent=True)

    def _history(self, group: str, since: int, limit: int | None) -> _Call:
        q: dict[str, Any] = {"since": since}
        if limit is not None:
            q["limit"] = limit
        return _Call("GET", f"/api/groups/{_group(group)}/history?{urlencode(q)}", idempotent=True)

    # Attempts and answers.

    def _encode(self, c: _Call) -> bytes:
        return self._ep.encode(c.method, c.path, c.body, c.headers)

    def _delay(self, c: _Call, attempt: int, err: Exception | None, resp: _http.Response | None) -> float | None:
        """How long to wait before trying again, or None to give up."""
        if attempt >= self.retries:
            return None
        if resp is not None:
            if resp.status != 503:
                return None
        elif isinstance(err, _http.ConnectionFailed):
            if err.sent and not c.idempotent:
                return None
        elif not isinstance(err, Unavailable):
            return None
        return min(1.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0)

    @staticmethod
    def _answer(resp: _http.Response | None, err: Exception | None) -> Any:
        if resp is None:
            if isinstance(err, _http.ConnectionFailed):
                raise Unavailable("unavailable", str(err)) from None
            raise err  # type: ignore[misc]
        try:
            body = json.loads(resp.body) if resp.body else {}
        except ValueError:
            body = None
        if 200 <= resp.status < 300:
            if body is None:
                raise GroupcastError("invalid_json", "the server answered something that is not JSON", resp.status)
            return body
        e = body.get("error") if isinstance(body, dict) else None
        if isinstance(e, dict):
            raise from_status(resp.status, str(e.get("code", "")), str(e.get("message", "")))
        raise from_status(resp.status, "", resp.body[:200].decode("utf-8", "replace") or f"HTTP {resp.status}")

    def close(self) -> None:
        """Closes the pooled connections (calls made later open new ones)."""
        self._sync.close()


class Client(_API):
    """The server API for blocking code (Django views, Celery tasks, scripts).
    Safe to share between threads. See :class:`_API` for the settings."""

    def _run(self, c: _Call) -> Any:
        raw = self._encode(c)
        attempt = 0
        while True:
            resp = err = None
            try:
                resp = self._sync.request(raw)
            except (_http.ConnectionFailed, Unavailable) as e:
                err = e
            delay = self._delay(c, attempt, err, resp)
            if delay is None:
                return self._answer(resp, err)
            time.sleep(delay)
            attempt += 1

    def publish(self, group: str, data: Any, *, idempotency_key: str | None = None,
                exclude: str | None = None) -> dict[str, Any]:
        """Publishes data (any JSON value) to every member of group but the
        connection ``exclude`` (a channel name), if given. In a group that
        keeps history a key is made when none is given, and the answer
        carries ``offset``, ``epoch`` and ``duplicate``."""
        return self._run(self._publish(group, data, idempotency_key, exclude))

    def send(self, channel: str, data: Any) -> dict[str, Any]:
        """Sends data to the one connection whose channel name is channel."""
        return self._run(self._send(channel, data))

    def publish_batch(self, messages: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Publishes up to 1000 messages, ``{"group": G, "data": D}`` or
        ``{"channel": C, "data": D}``, in one request; the answer has one
        result per message (``{"ok": true}`` or ``{"error": {...}}``)."""
        return self._run(self._batch(messages))

    def group_add(self, group: str, channel: str) -> None:
        """Makes the connection channel join group."""
        self._run(self._membership("PUT", group, channel))

    def group_discard(self, group: str, channel: str) -> None:
        """Makes the connection channel leave group."""
        self._run(self._membership("DELETE", group, channel))

    def disconnect(self, *, user: str | None = None, channel: str | None = None) -> None:
        """Closes (with 4003) every connection of user, on every instance,
        or the one connection channel."""
        self._run(self._disconnect(user, channel))

    def presence(self, group: str, *, limit: int | None = None, count_only: bool = False,
                 by: str | None = None) -> dict[str, Any]:
        """Who is in group: ``{"count": N, "members": [...]}``."""
        return self._run(self._presence(group, limit, count_only, by))

    def history(self, group: str, *, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """The kept messages after offset since: ``{"epoch": E, "messages":
        [{"offset": N, "data": D}, ...]}``."""
        return self._run(self._history(group, since, limit))


class AsyncClient(_API):
    """The server API for async code. Each event loop gets its own
    connections; under ``async_to_sync`` the calls share the blocking pool
    (see :class:`groupcast._http.AsyncPool`)."""

    def __init__(self, url: str, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, api_key, **kwargs)
        self._async = _http.AsyncPool(self._ep, self.max_in_flight, self._sync)

    async def _run(self, c: _Call) -> Any:
        raw = self._encode(c)
        attempt = 0
        while True:
            resp = err = None
            try:
                resp = await self._async.request(raw)
            except (_http.ConnectionFailed, Unavailable) as e:
                err = e
            delay = self._delay(c, attempt, err, resp)
            if delay is None:
                return self._answer(resp, err)
            await asyncio.sleep(delay)
            attempt += 1

    async def publish(self, group: str, data: Any, *, idempotency_key: str | None = None,
                      exclude: str | None = None) -> dict[str, Any]:
        """See :meth:`Client.publish`."""
        return await self._run(self._publish(group, data, idempotency_key, exclude))

    async def send(self, channel: str, data: Any) -> dict[str, Any]:
        """See :meth:`Client.send`."""
        return await self._run(self._send(channel, data))

    async def publish_batch(self, messages: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """See :meth:`Client.publish_batch`."""
        return await self._run(self._batch(messages))

    async def group_add(self, group: str, channel: str) -> None:
        """See :meth:`Client.group_add`."""
        await self._run(self._membership("PUT", group, channel))

    async def group_discard(self, group: str, channel: str) -> None:
        """See :meth:`Client.group_discard`."""
        await self._run(self._membership("DELETE", group, channel))

    async def disconnect(self, *, user: str | None = None, channel: str | None = None) -> None:
        """See :meth:`Client.disconnect`."""
        await self._run(self._disconnect(user, channel))

    async def presence(self, group: str, *, limit: int | None = None, count_only: bool = False,
                       by: str | None = None) -> dict[str, Any]:
        """See :meth:`Client.presence`."""
        return await self._run(self._presence(group, limit, count_only, by))

    async def history(self, group: str, *, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """See :meth:`Client.history`."""
        return await self._run(self._history(group, since, limit))

    def close(self) -> None:
        """Closes the pooled connections of every loop and the blocking pool."""
        self._async.close()
        super().close()
