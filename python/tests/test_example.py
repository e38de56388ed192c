"""examples/django-chat on gunicorn behind the real binary: log in through
Django's login page, a message posted through a view (post_save ->
group_send) reaches the socket, a closed room is refused with the
consumer's code, a custom frame is answered by the consumer."""

from __future__ import annotations

import asyncio
import http.cookiejar
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Iterator

import pytest

from groupcast import GroupcastError
from groupcast.testing import GroupcastServer, WebsocketClient, free_port

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "django-chat"


@pytest.fixture(scope="module")
def chat(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, GroupcastServer]]:
    gunicorn = shutil.which("gunicorn")
    if not gunicorn:
        pytest.skip("gunicorn is missing (apt-get install gunicorn)")
    port = free_port()
    django = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_PATH": str(tmp_path_factory.mktemp("chat") / "db.sqlite3"), "HOOK_SECRET": "s3cret",
           "DJANGO_DEBUG": "false"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    manage = [sys.executable, str(EXAMPLE / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True)
    subprocess.run([*manage, "shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('ada', password='pw')"],
                   env=env, check=True)
    hooks = {f"HOOK_{e.upper()}_URL": f"{django}/groupcast/{e}" for e in ("connect", "join", "receive", "disconnect")}
    with GroupcastServer(binary, env={**hooks, "HOOK_SECRET": "s3cret"}) as gc:
        env.update(GROUPCAST_URL=gc.url, GROUPCAST_PUBLIC_URL=gc.url)
        g = subprocess.Popen([gunicorn, "-b", f"127.0.0.1:{port}", "-w", "2", "--log-level", "warning", "chatsite.wsgi"], cwd=EXAMPLE, env=env)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    urllib.request.urlopen(django + "/accounts/login/", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or g.poll() is not None:
                        raise RuntimeError("gunicorn did not start")
                    time.sleep(0.1)
            yield django, gc
        finally:
            g.terminate()
            g.wait(10)


def login(django: str) -> tuple[urllib.request.OpenerDirector, str]:
    """Logs ada in through the login form; returns the opener and the Cookie header."""
    jar = http.cookiejar.CookieJar()
    web = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = web.open(django + "/accounts/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urllib.parse.urlencode({"username": "ada", "password": "pw", "csrfmiddlewaretoken": token}).encode()
    web.open(urllib.request.Request(django + "/accounts/login/", body, {"Referer": django + "/accounts/login/"}))
    cookies = {c.name: c.value for c in jar}
    assert "sessionid" in cookies, "login failed"
    return web, "; ".join(f"{k}={v}" for k, v in cookies.items())


def test_the_chat_end_to_end(chat: tuple[str, GroupcastServer]) -> None:
    django, gc = chat
    web, cookie = login(django)
    page = web.open(django + "/chat/lobby/").read().decode()
    assert 'from "/client.js"' in page
    assert b"export function connect" in web.open(django + "/client.js").read()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    def post(path: str, text: str) -> None:
        body = urllib.parse.urlencode({"text": text, "csrfmiddlewaretoken": token}).encode()
        web.open(urllib.request.Request(django + path, body, {"Referer": django + "/chat/lobby/"})).read()

    async def scenario() -> None:
        async with await WebsocketClient.connect(gc.ws_url, headers={"Cookie": cookie}) as ws:
            await ws.join("room.lobby")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, post, "/chat/lobby/messages", "hello from a view")
            m = await ws.receive_message()
            assert m["data"]["type"] == "chat.message" and m["data"]["text"] == "hello from a view"
            assert m["data"]["user"] == "ada"
            await loop.run_in_executor(None, post, "/chat/lobby/announce", "maintenance at 5")
            assert (await ws.receive_message())["data"] == {"type": "chat.notice", "text": "maintenance at 5"}
            with pytest.raises(GroupcastError) as e:
                await ws.join("room.closed")
            assert e.value.code == "room_closed"
            history = await ws.call("history", room="lobby")
            assert history == [{"text": "hello from a view", "user": "ada"}]
        # Without the session: refused.
        with pytest.raises(Exception):
            await WebsocketClient.connect(gc.ws_url)

    asyncio.run(scenario())
