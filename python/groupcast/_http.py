"""A small HTTP/1.1 client for the server API: keep-alive connection pools,
one for blocking callers (shared by every thread) and one per event loop
for async callers, each with a bound on the calls in flight.

It speaks only what the groupcast server answers (Content-Length or chunked
bodies, JSON), which keeps a call to a few system calls and no header
parsing beyond the three headers that matter.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
import threading
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import Unavailable

#: Largest answer body read, in bytes.
MAX_RESPONSE_BYTES = 16 << 20


class ConnectionFailed(Exception):
    """A network failure; ``sent`` says whether the request may have reached
    the server (False: it certainly did not, so a retry is always safe)."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True)
class Response:
    """One answer: status and body (the headers are not kept)."""

    status: int
    body: bytes


class Endpoint:
    """Where requests go and the headers every request carries."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"groupcast url must be http:// or https://host[:port], not {url!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        host = parts.netloc.rsplit("@", 1)[-1]
        fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f" HTTP/1.1\r\nHost: {host}\r\n{fixed}".encode("latin-1")
        self.ssl_context = ssl.create_default_context() if self.tls else None

    def encode(self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None) -> bytes:
        """The request's bytes."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        if body is None:
            body = b""
            if method in ("GET", "DELETE"):
                return b"".join((method.encode(), b" ", (self.prefix + path).encode(), self._head, extra.encode("latin-1"), b"\r\n"))
        return b"".join((
            method.encode(), b" ", (self.prefix + path).encode(), self._head, extra.encode("latin-1"),
            b"Content-Type: application/json\r\nContent-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
        ))


class _Parser:
    """Reads one response from bytes fed to it."""

    __slots__ = ("buf", "status", "length", "chunked", "close", "body", "head_done")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.status = 0
        self.length = -1
        self.chunked = False
        self.close = False
        self.body: bytes | None = None
        self.head_done = False

    def feed(self, data: bytes) -> bool:
        """Adds data; True once the whole response is in (then ``body``).
        A malformed response raises ConnectionFailed."""
        try:
            return self._feed(data)
        except (ValueError, IndexError):
            raise ConnectionFailed("malformed HTTP response", True) from None

    def _feed(self, data: bytes) -> bool:
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    raise ConnectionFailed("response header too long", True)
                return False
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            lines = head.split("\r\n")
            try:
                self.status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                raise ConnectionFailed(f"not an HTTP response: {lines[0][:80]!r}", True) from None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.length = int(value)
                    if self.length < 0:
                        raise ValueError("negative Content-Length")
                elif name == "transfer-encoding":
                    self.chunked = "chunked" in value.lower()
                elif name == "connection":
                    self.close = "close" in value.lower()
            if self.length < -1 or self.length > MAX_RESPONSE_BYTES:
                raise ConnectionFailed("response too large", True)
            if self.status in (204, 304) or 100 <= self.status < 200:
                self.length = 0
            self.head_done = True
        if self.chunked:
            return self._chunks()
        if self.length < 0:  # read until close; the server never does this
            return False
        if len(self.buf) >= self.length:
            self.body = bytes(self.buf[: self.length])
            return True
        return False

    def _chunks(self) -> bool:
        out = bytearray()
        pos = 0
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return False
            size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
            if size < 0:
                raise ValueError("negative chunk size")
            if size == 0:
                if self.buf.find(b"\r\n", eol + 2) < 0:
                    return False
                self.body = bytes(out)
                return True
            if len(self.buf) < eol + 2 + size + 2:
                return False
            out += self.buf[eol + 2 : eol + 2 + size]
            if len(out) > MAX_RESPONSE_BYTES:
                raise ConnectionFailed("response too large", True)
            pos = eol + 2 + size + 2

    def eof(self) -> bool:
        """The connection closed: True when that completes the response."""
        if self.head_done and self.length < 0 and not self.chunked:
            self.body = bytes(self.buf)
            return True
        return False


class _SyncConn:
    """One blocking keep-alive connection."""

    def __init__(self, ep: Endpoint) -> None:
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=ep.timeout)
        except OSError as e:
            raise ConnectionFailed(f"cannot connect to {ep.host}:{ep.port}: {e}", False) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ep.ssl_context is not None:
            sock = ep.ssl_context.wrap_socket(sock, server_hostname=ep.host)
        self.sock = sock
        self.used = False
        self.reused = False

    def alive(self) -> bool:
        """False when the server has closed it (an idle connection must have
        nothing to read)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def request(self, raw: bytes) -> tuple[Response, bool]:
        """Sends raw and reads the answer; also says whether to keep the
        connection."""
        self.reused, self.used = self.used, True
        reused = self.reused
        try:
            self.sock.sendall(raw)
        except OSError as e:
            raise ConnectionFailed(f"send: {e}", False) from None
        p = _Parser()
        got = False
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError as e:
                raise ConnectionFailed(f"receive: {e}", True) from None
            if not data:
                if p.eof():
                    return Response(p.status, p.body or b""), False
                # Nothing at all on a reused connection: the server had
                # closed it while idle, before reading this request.
                raise ConnectionFailed("connection closed by the server", got or not reused)
            got = True
            if p.feed(data):
                return Response(p.status, p.body or b""), not p.close

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class SyncPool:
    """Keep-alive connections for blocking callers, shared by all threads
    (``async_to_sync`` runs each call on a new thread, so a per-thread pool
    would never be reused). At most ``max_in_flight`` calls run at once;
    a caller waits up to the timeout for a slot, then gets Unavailable."""

    def __init__(self, ep: Endpoint, max_in_flight: int) -> None:
        self.ep = ep
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._idle: list[_SyncConn] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def request(self, raw: bytes) -> Response:
        """One request on a pooled connection (a fresh one if none is idle)."""
        if not self._slots.acquire(timeout=self.ep.timeout):
            raise Unavailable("unavailable", "too many groupcast calls in flight")
        try:
            while True:
                conn = self._get()
                try:
                    resp, keep = conn.request(raw)
                except ConnectionFailed as e:
                    conn.close()
                    if conn.reused and not e.sent:
                        continue  # it went stale while idle: a fresh one
                    raise
                except BaseException:
                    conn.close()
                    raise
                if keep:
                    with self._lock:
                        self._idle.append(conn)
                else:
                    conn.close()
                return resp
        finally:
            self._slots.release()

    def _get(self) -> _SyncConn:
        with self._lock:
            if self._pid != os.getpid():  # forked (Celery prefork, gunicorn): not ours
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if conn.alive():
                    return conn
                conn.close()
        return _SyncConn(self.ep)

    def close(self) -> None:
        """Closes the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()


class _AsyncConn(asyncio.Protocol):
    """One keep-alive connection on an event loop."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: _Parser | None = None
        self.waiter: asyncio.Future[tuple[Response, bool]] | None = None
        self.lost = False
        self.used = False  # a request was ever sent on it
        self.reused = False  # one was sent before the current one
        self.got = False  # bytes of this request's answer came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        p, w = self.parser, self.waiter
        if p is None or w is None or w.done():
            self.lost = True  # unasked bytes: never reuse
            if self.transport:
                self.transport.close()
            return
        self.got = True
        try:
            done = p.feed(data)
        except ConnectionFailed as e:
            w.set_exception(e)
            return
        if done:
            self.parser = None
            w.set_result((Response(p.status, p.body or b""), not p.close))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        p, w = self.parser, self.waiter
        if w is not None and not w.done():
            if p is not None and p.eof():
                w.set_result((Response(p.status, p.body or b""), False))
            else:
                w.set_exception(ConnectionFailed(f"connection closed by the server: {exc or 'EOF'}", self.got or not self.reused))

    async def request(self, raw: bytes, timeout: float) -> tuple[Response, bool]:
        loop = asyncio.get_running_loop()
        self.reused, self.used = self.used, True
        self.got = False
        self.parser = _Parser()
        self.waiter = loop.create_future()
        if self.lost or self.transport is None:
            raise ConnectionFailed("connection closed", False)
        self.transport.write(raw)
        timer = loop.call_later(timeout, _expire, self.waiter)
        try:
            return await self.waiter
        finally:
            timer.cancel()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(w: asyncio.Future) -> None:
    if not w.done():
        w.set_exception(ConnectionFailed("timed out waiting for the server", True))


class _LoopPool:
    """The keep-alive connections of one event loop."""

    def __init__(self, max_in_flight: int) -> None:
        self.idle: list[_AsyncConn] = []
        self.slots = asyncio.Semaphore(max_in_flight)


class AsyncPool:
    """Keep-alive connections for async callers, one set per event loop.

    A loop that ``async_to_sync`` made for this one call (it is closed when
    the call returns) would throw its connections away each time, so there
    the call runs on the shared blocking pool instead: nothing else runs on
    that loop, and the connection outlives it.
    """

    def __init__(self, ep: Endpoint, max_in_flight: int, sync: SyncPool) -> None:
        self.ep = ep
        self.max_in_flight = max_in_flight
        self.sync = sync
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = weakref.WeakKeyDictionary()

    async def request(self, raw: bytes) -> Response:
        """One request on a connection of the running loop's pool."""
        loop = asyncio.get_running_loop()
        if _throwaway(loop):
            return self.sync.request(raw)
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _LoopPool(self.max_in_flight)
        if pool.slots.locked():
            try:
                await asyncio.wait_for(pool.slots.acquire(), self.ep.timeout)
            except asyncio.TimeoutError:
                raise Unavailable("unavailable", "too many groupcast calls in flight") from None
        else:
            await pool.slots.acquire()
        try:
            conn = None
            while pool.idle:
                c = pool.idle.pop()
                if not c.lost:
                    conn = c
                    break
            if conn is None:
                conn = await self._connect(loop)
            try:
                resp, keep = await conn.request(raw, self.ep.timeout)
            except ConnectionFailed as e:
                conn.close()
                if not (conn.reused and not e.sent):
                    raise
                conn = await self._connect(loop)  # it went stale while idle
                try:
                    resp, keep = await conn.request(raw, self.ep.timeout)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                conn.close()
                raise
            if keep and not conn.lost:
                pool.idle.append(conn)
            else:
                conn.close()
            return resp
        finally:
            pool.slots.release()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _AsyncConn:
        ep = self.ep
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_AsyncConn, ep.host, ep.port, ssl=ep.ssl_context), ep.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectionFailed(f"cannot connect to {ep.host}:{ep.port}: {e!r}", False) from None
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def close(self) -> None:
        """Closes the idle connections of every loop."""
        for pool in list(self._pools.values()):
            for c in pool.idle:
                c.close()
            pool.idle.clear()


def _throwaway(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether asgiref's async_to_sync made loop for a single call (it
    keeps those loops in AsyncToSync.loop_thread_executors)."""
    return loop in _ASYNC_TO_SYNC_LOOPS


try:
    from asgiref.sync import AsyncToSync as _AsyncToSync

    _ASYNC_TO_SYNC_LOOPS: Any = getattr(_AsyncToSync, "loop_thread_executors", {})
except ImportError:  # pragma: no cover - asgiref comes with Django
    _ASYNC_TO_SYNC_LOOPS = {}
