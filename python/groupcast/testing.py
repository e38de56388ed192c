"""Test helpers in the spirit of Channels' ``WebsocketCommunicator``: run a
real groupcast binary on a free port (embedded NATS) and talk to it over a
real WebSocket.

::

    with GroupcastServer("/path/to/groupcast", env={"HOOK_CONNECT_URL": ...}) as server:
        async def scenario():
            async with await WebsocketClient.connect(server.ws_url) as ws:
                await ws.join("room.lobby")
                Client(server.url).publish("room.lobby", {"text": "hi"})
                assert (await ws.receive_message())["data"] == {"text": "hi"}
        asyncio.run(scenario())
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Any, Mapping, Sequence

from .errors import GroupcastError

__all__ = ["GroupcastServer", "WebsocketClient", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GroupcastServer:
    """A groupcast process: ``binary`` run with ``PORT`` set to a free port,
    ``NATS_URL`` unset (embedded NATS) and ``env`` added. ``start`` returns
    once ``/readyz`` answers 200; ``stop`` sends SIGTERM and waits. Its log
    is kept in a temporary file, ``log()`` reads it. ``prefix`` is run
    before the binary (e.g. ``["taskset", "-c", "0"]``)."""

    def __init__(self, binary: str, env: Mapping[str, str] | None = None, *, ready_timeout: float = 15.0,
                 prefix: Sequence[str] = ()) -> None:
        self.binary = binary
        self.prefix = list(prefix)
        self.env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """ws://127.0.0.1:<port>/ws"""
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> "GroupcastServer":
        """Starts the process and waits until it is ready."""
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        env.update({"PORT": str(self.port), "LOG_FORMAT": "text"}, **self.env)
        self.proc = subprocess.Popen([*self.prefix, self.binary], env=env, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"groupcast exited with {self.proc.returncode} before it was ready:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"groupcast not ready in {self.ready_timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        """What the process has logged so far."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def __enter__(self) -> "GroupcastServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()


class WebsocketClient:
    """One protocol connection (python3-websockets). Requests (``join``,
    ``leave``, ``send``, ``call``) wait for their answer and raise
    :class:`GroupcastError` on an error frame; every other frame (deliveries,
    presence, joined/left, gaps) is queued for ``receive``, at most
    ``max_queued`` (past that the connection is closed: a test that reads
    nothing should not grow without bound)."""

    def __init__(self, ws: Any, welcome: dict[str, Any], max_queued: int = 10_000) -> None:
        self.ws = ws
        self.welcome = welcome
        self._frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queued)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def channel(self) -> str:
        """This connection's channel name."""
        return self.welcome["channel"]

    @classmethod
    async def connect(cls, url: str, *, token: str | None = None, headers: Mapping[str, str] | None = None,
                      timeout: float = 5.0) -> "WebsocketClient":
        """Opens url (``?token=`` added when token is given), reads the
        welcome frame. A refused upgrade raises websockets'
        ``InvalidStatusCode`` (its ``status_code`` tells why)."""
        import websockets

        if token:
            url += ("&" if "?" in url else "?") + "token=" + token
        ws = await asyncio.wait_for(websockets.connect(url, extra_headers=dict(headers or {}), max_size=None), timeout)
        raw = await asyncio.wait_for(ws.recv(), timeout)
        first, *rest = raw.split("\n")
        welcome = json.loads(first)
        if welcome.get("type") != "welcome":
            await ws.close()
            raise GroupcastError("invalid_frame", f"first frame {welcome!r}, want welcome")
        c = cls(ws, welcome)
        for line in rest:
            c._route(json.loads(line))
        return c

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                for line in raw.split("\n"):
                    if line:
                        self._route(json.loads(line))
        except Exception:  # closed: close_code tells how
            pass
        finally:
            for f in self._pending.values():
                if not f.done():
                    f.set_exception(GroupcastError("disconnected", f"connection closed ({self.ws.close_code})"))

    def _route(self, frame: dict[str, Any]) -> None:
        fid = frame.get("id")
        if isinstance(fid, int) and fid in self._pending and frame.get("type") in ("ack", "error", "pong", "reply", "presence"):
            f = self._pending.pop(fid)
            if not f.done():
                f.set_result(frame)
            return
        try:
            self._frames.put_nowait(frame)
        except asyncio.QueueFull:
            asyncio.get_running_loop().create_task(self.ws.close(1008, "test client queue full"))

    async def request(self, frame: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Sends frame with a fresh id and returns its answer."""
        self._next_id += 1
        fid = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[fid] = fut
        await self.ws.send(json.dumps({**frame, "id": fid}))
        try:
            answer = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(fid, None)
        if answer.get("type") == "error":
            raise GroupcastError(answer.get("code", ""), answer.get("message", ""))
        return answer

    async def join(self, group: str, **fields: Any) -> dict[str, Any]:
        """Joins group; returns the ack."""
        return await self.request({"type": "join", "group": group, **fields})

    async def leave(self, group: str) -> dict[str, Any]:
        """Leaves group."""
        return await self.request({"type": "leave", "group": group})

    async def send(self, group: str, data: Any, **fields: Any) -> dict[str, Any]:
        """Publishes data to group from this client."""
        return await self.request({"type": "send", "group": group, "data": data, **fields})

    async def call(self, type: str, **fields: Any) -> Any:
        """Sends a frame of an application's own type and returns its
        reply's data."""
        return (await self.request({"type": type, **fields})).get("data")

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame that is no answer to a request."""
        return await asyncio.wait_for(self._frames.get(), timeout)

    async def receive_message(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next delivery (``"type":"message"``), skipping other frames."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            frame = await self.receive(max(0.0, deadline - asyncio.get_running_loop().time()))
            if frame.get("type") == "message":
                return frame

    async def receive_nothing(self, timeout: float = 0.2) -> bool:
        """True when no frame comes within timeout."""
        try:
            await self.receive(timeout)
        except asyncio.TimeoutError:
            return True
        return False

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Waits until the server closes the connection; its close code."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.ws.close_code

    async def close(self, code: int = 1000) -> None:
        """Closes the connection and stops the reader."""
        await self.ws.close(code)
        try:
            await asyncio.wait_for(self._reader, 5)
        except asyncio.TimeoutError:
            self._reader.cancel()

    async def __aenter__(self) -> "WebsocketClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
