"""Fixtures: the real groupcast binary (GROUPCAST_BIN, or built with go),
servers started from it, and a fault-injecting HTTP server for retries."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from typing import Callable, Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

from groupcast.testing import GroupcastServer  # noqa: E402

JWT_SECRET = "a-test-secret-of-at-least-32-bytes!!"

# One Django project for every test: tests/djangoapp, on a SQLite file so
# that the WSGI server's threads share it.
_db = tempfile.NamedTemporaryFile(prefix="groupcast-test-", suffix=".sqlite3", delete=False)
os.environ["GROUPCAST_TEST_DB"] = _db.name
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")
import django  # noqa: E402

django.setup()


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The groupcast binary under test."""
    path = os.environ.get("GROUPCAST_BIN")
    if path:
        return path
    if not shutil.which("go"):
        pytest.skip("set GROUPCAST_BIN to a groupcast binary (or put go on PATH to build one)")
    out = tmp_path_factory.mktemp("bin") / "groupcast"
    subprocess.run(["go", "build", "-o", str(out), "./app"], cwd=ROOT, check=True)
    return str(out)


@pytest.fixture(scope="session")
def server(binary: str) -> Iterator[GroupcastServer]:
    """A server with tokens, history for hist.*, presence for pres.*."""
    with GroupcastServer(binary, env={
        "JWT_SECRET": JWT_SECRET,
        "GROUP_POLICIES": "hist.*=recoverable",
        "PRESENCE_GROUPS": "pres.*",
        "FRAMES_PER_SECOND": "1000",
    }) as s:
        yield s


class Fault:
    """A real HTTP/1.1 server whose answers a test scripts: ``answers`` is
    a list of (status, body) popped per request (then 202 {"ok":true});
    ``requests`` records (method, path, headers); ``connections`` counts
    accepted TCP connections, ``max_active`` the most requests it had in
    hand at once; ``close_after`` closes each connection after
    that many answers without saying so."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        self.close_after = 0
        self.delay = 0.0
        self.active = 0
        self.max_active = 0
        lock = threading.Lock()
        fault = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                fault.connections += 1
                self.served = 0

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                fault.requests.append((self.command, self.path, dict(self.headers)))
                with lock:
                    fault.active += 1
                    fault.max_active = max(fault.max_active, fault.active)
                if fault.delay:
                    threading.Event().wait(fault.delay)
                with lock:
                    fault.active -= 1
                status, body = fault.answers.pop(0) if fault.answers else (202, b'{"ok":true}')
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.served += 1
                if fault.close_after and self.served >= fault.close_after:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fault() -> Iterator[Fault]:
    f = Fault()
    yield f
    f.stop()


@pytest.fixture
def closed_url() -> str:
    """The URL of a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run(coro_fn: Callable[[], object]) -> object:
    """Runs an async scenario in a fresh loop."""
    import asyncio

    return asyncio.run(coro_fn())  # type: ignore[arg-type]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@pytest.fixture(scope="session")
def django_url() -> Iterator[str]:
    """tests/djangoapp served by a real WSGI server, with users ada and
    root (staff), password "pw"."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", verbosity=0, interactive=False)
    User.objects.create_user("ada", password="pw")
    User.objects.create_user("root", password="pw", is_staff=True)
    httpd = make_server("127.0.0.1", 0, get_wsgi_application(), server_class=_ThreadingWSGIServer,
                        handler_class=_QuietHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    os.unlink(_db.name)


HOOK_SECRET = "hook-secret-for-tests"


@pytest.fixture(scope="session")
def hooked(binary: str, django_url: str) -> Iterator[GroupcastServer]:
    """A server whose every hook is the Django app's; the app's channel
    layer points at it."""
    from django.conf import settings

    env = {f"HOOK_{e.upper()}_URL": f"{django_url}/groupcast/{e}" for e in ("connect", "join", "send", "receive", "disconnect")}
    env.update(HOOK_SECRET=HOOK_SECRET, PRESENCE_GROUPS="room.*")
    with GroupcastServer(binary, env=env) as s:
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "groupcast.layers.GroupcastChannelLayer", "CONFIG": {"url": s.url}}}
        from channels.layers import channel_layers

        channel_layers.backends.clear()
        yield s


def session_cookie(username: str) -> str:
    """A Cookie header for a Django session in which username logged in."""
    from django.test import Client as DjangoClient

    c = DjangoClient()
    assert c.login(username=username, password="pw")
    return f"sessionid={c.cookies['sessionid'].value}"
