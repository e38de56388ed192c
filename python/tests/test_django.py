"""groupcast.django's hook views and Consumer, with the real binary calling
a real Django (sessions, auth) over HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request

import pytest
from asgiref.sync import async_to_sync
from websockets.exceptions import InvalidStatusCode

from conftest import HOOK_SECRET, session_cookie
from djangoapp import consumers
from groupcast import Client, GroupcastError
from groupcast.testing import GroupcastServer, WebsocketClient


@pytest.fixture
def gc(hooked: GroupcastServer) -> GroupcastServer:
    """The hooked server, with the Django app's channel layer on it."""
    from channels.layers import channel_layers
    from django.conf import settings

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "groupcast.layers.GroupcastChannelLayer",
                                           "CONFIG": {"url": hooked.url}}}
    channel_layers.backends.clear()
    return hooked


COOKIES: dict[str, str] = {}


@pytest.fixture(autouse=True)
def logged_in(django_url: str) -> None:
    """Session cookies of ada and root (made here: the ORM is sync only)."""
    for name in ("ada", "root"):
        if name not in COOKIES:
            COOKIES[name] = session_cookie(name)


def connect(gc: GroupcastServer, username: str | None) -> "asyncio.Future[WebsocketClient]":
    headers = {"Cookie": COOKIES[username]} if username else {}
    return WebsocketClient.connect(gc.ws_url, headers=headers)


def test_connect_sees_the_django_session(gc: GroupcastServer) -> None:
    from django.contrib.auth.models import User

    ada = User.objects.get(username="ada")

    async def scenario() -> None:
        async with await connect(gc, "ada") as ws:
            assert ws.welcome["user"] == str(ada.pk)
            # connect's group_add joined user.<pk> at once.
            await asyncio.get_running_loop().run_in_executor(None, Client(gc.url).publish, f"user.{ada.pk}", "hi ada")
            assert (await ws.receive_message())["data"] == "hi ada"
            # permit(): only room.* and user.<pk>.
            with pytest.raises(GroupcastError) as e:
                await ws.join("other.x")
            assert e.value.code == "forbidden"
            await ws.join("room.lobby")
            p = await asyncio.get_running_loop().run_in_executor(None, lambda: Client(gc.url).presence("room.lobby"))
            assert p["members"][0]["info"] == {"name": "ada"}

    asyncio.run(scenario())


def test_anonymous_is_refused_with_the_consumers_code(gc: GroupcastServer) -> None:
    with pytest.raises(InvalidStatusCode) as e:
        asyncio.run(connect(gc, None))
    assert e.value.status_code >= 400
    # The refused upgrade's body carries the consumer's code.
    conn = http.client.HTTPConnection("127.0.0.1", gc.port, timeout=5)
    conn.request("GET", "/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    resp = conn.getresponse()
    assert json.loads(resp.read())["error"] == {"code": "login_required", "message": "log in first"}


def test_join_send_receive_and_a_failing_view(gc: GroupcastServer) -> None:
    async def scenario() -> None:
        async with await connect(gc, "ada") as ws, await connect(gc, "root") as staff:
            with pytest.raises(GroupcastError) as e:
                await ws.join("room.secret")
            assert e.value.code == "not_member"
            await staff.join("room.secret")  # staff may

            await ws.join("room.a")
            await ws.send("room.a", {"text": "hello"})
            assert (await ws.receive_message())["data"] == {"text": "hello", "by": "ada"}  # rewritten
            with pytest.raises(GroupcastError) as e:
                await ws.send("room.a", {"text": "buy spam"})
            assert e.value.code == "spam"

            assert await ws.call("whoami") == {"user": "ada", "channel": ws.channel}
            await staff.join("room.a")
            assert await ws.call("shout", group="room.a", text="to the others") == "sent"
            assert (await staff.receive_message())["data"] == {"type": "shout", "text": "to the others"}
            assert await ws.receive_nothing()
            with pytest.raises(GroupcastError) as e:
                await ws.call("boom")  # the view raised: a refusal, not a hanging socket
            assert e.value.code == "server_error"
            with pytest.raises(GroupcastError) as e:
                await ws.call("nosuchtype")
            assert e.value.code == "unknown_type"
            assert await ws.call("whoami")  # still usable

    asyncio.run(scenario())


def test_disconnect_reaches_the_consumer(gc: GroupcastServer) -> None:
    async def scenario() -> str:
        ws = await connect(gc, "ada")
        await ws.join("room.bye")
        await ws.close(1000)
        return ws.channel

    channel = asyncio.run(scenario())
    with consumers.disconnected:
        assert consumers.disconnected.wait_for(lambda: any(d["channel"] == channel for d in consumers.disconnects), 5)
        d = next(d for d in consumers.disconnects if d["channel"] == channel)
    assert d["user"] == "ada" and d["code"] == 1000 and "room.bye" in d["groups"]


def test_layer_group_send_from_a_view_reaches_a_socket(gc: GroupcastServer) -> None:
    from channels.layers import get_channel_layer

    async def scenario() -> None:
        async with await connect(gc, "ada") as ws:
            await ws.join("room.news")
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: async_to_sync(get_channel_layer().group_send)("room.news", {"type": "chat.message", "text": "x"}))
            assert (await ws.receive_message())["data"] == {"type": "chat.message", "text": "x"}

    asyncio.run(scenario())


def post(url: str, body: bytes, secret: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    if secret is not None:
        req.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_hook_views_check_the_secret_and_the_body(django_url: str) -> None:
    url = f"{django_url}/groupcast/join"
    call = json.dumps({"event": "join", "group": "room.a", "channel": "n.1"}).encode()
    assert post(url, call, None) == (403, {"error": {"code": "forbidden", "message": "bad hook secret"}})
    assert post(url, call, "wrong")[0] == 403
    assert post(url, call, HOOK_SECRET) == (200, {})
    assert post(url, b"{not json", HOOK_SECRET)[1]["error"]["code"] == "invalid_json"
    assert post(f"{django_url}/groupcast/send", call, HOOK_SECRET)[0] == 400  # a join call on the send URL
