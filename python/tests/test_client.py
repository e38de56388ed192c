"""The server API client against the real binary, and its retry and
pooling rules against a scripted HTTP server."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from conftest import JWT_SECRET, Fault
from groupcast import AsyncClient, Client, GroupcastError, NotFound, Unauthorized, Unavailable, mint_token
from groupcast.testing import GroupcastServer, WebsocketClient


def test_publish_send_and_membership_reach_a_socket(server: GroupcastServer) -> None:
    api = Client(server.url)

    async def scenario() -> None:
        tok = mint_token(JWT_SECRET, 7, join=["*"], send=["*"])
        async with await WebsocketClient.connect(server.ws_url, token=tok) as ws:
            assert ws.welcome["user"] == "7"
            await ws.join("room.a")
            api.publish("room.a", {"text": "héllo", "n": 1})
            m = await ws.receive_message()
            assert (m["group"], m["data"]) == ("room.a", {"text": "héllo", "n": 1})

            api.send(ws.channel, ["just", "you"])
            m = await ws.receive_message()
            assert m["channel"] == ws.channel and m["data"] == ["just", "you"]

            api.group_add("room.b", ws.channel)
            assert await ws.receive() == {"type": "joined", "group": "room.b"}
            api.publish("room.b", 2)
            assert (await ws.receive_message())["data"] == 2
            api.group_discard("room.b", ws.channel)
            assert await ws.receive() == {"type": "left", "group": "room.b"}
            api.publish("room.b", 3)
            assert await ws.receive_nothing()

            async with await WebsocketClient.connect(server.ws_url, token=tok) as other:
                await other.join("room.a")
                api.publish("room.a", "not you", exclude=ws.channel)
                assert (await other.receive_message())["data"] == "not you"
                assert await ws.receive_nothing()
                api.publish_batch([{"group": "room.a", "data": "nor you", "exclude": other.channel}])
                assert (await ws.receive_message())["data"] == "nor you"
                assert await other.receive_nothing()

            r = api.publish_batch([{"group": "room.a", "data": "x"}, {"channel": ws.channel, "data": "y"},
                                   {"group": "room.a", "data": "z"}])
            assert r["ok"] and len(r["results"]) == 3
            got = [(await ws.receive_message())["data"] for _ in range(3)]
            # One publisher, one group: in order; the channel's own subject has no order with it.
            assert [d for d in got if d != "y"] == ["x", "z"] and "y" in got

    asyncio.run(scenario())


def test_async_client_and_disconnect_user(server: GroupcastServer) -> None:
    async def scenario() -> None:
        api = AsyncClient(server.url)
        tok = mint_token(JWT_SECRET, "ada", join=["room.*"])
        a = await WebsocketClient.connect(server.ws_url, token=tok)
        b = await WebsocketClient.connect(server.ws_url, token=tok)
        other = await WebsocketClient.connect(server.ws_url, token=mint_token(JWT_SECRET, "bob", join=["room.*"]))
        await a.join("room.c")
        await api.publish("room.c", {"k": "v"})
        assert (await a.receive_message())["data"] == {"k": "v"}
        await api.disconnect(user="ada")
        assert await a.wait_closed() == 4003
        assert await b.wait_closed() == 4003
        assert await other.receive_nothing()  # bob is still connected
        await other.request({"type": "ping"})
        await api.disconnect(channel=other.channel)
        assert await other.wait_closed() == 4003
        api.close()

    asyncio.run(scenario())


def test_history_and_idempotent_publish(server: GroupcastServer) -> None:
    api = Client(server.url, group_policies="hist.*=recoverable")
    first = api.publish("hist.one", {"n": 1}, idempotency_key="k1")
    again = api.publish("hist.one", {"n": 1}, idempotency_key="k1")
    assert again["duplicate"] is True and again["offset"] == first["offset"]
    auto = api.publish("hist.one", {"n": 2})  # a key is made: the group keeps history
    assert auto["offset"] == first["offset"] + 1 and not auto.get("duplicate")
    h = api.history("hist.one")
    assert [m["data"] for m in h["messages"]] == [{"n": 1}, {"n": 2}]
    assert api.history("hist.one", since=first["offset"])["messages"][0]["data"] == {"n": 2}
    # A large answer comes chunked; both pools read it.
    for i in range(40):
        api.publish("hist.big", {"i": i, "pad": "x" * 200})
    assert [m["data"]["i"] for m in api.history("hist.big")["messages"]] == list(range(40))
    big = asyncio.run(AsyncClient(server.url).history("hist.big", limit=40))
    assert len(big["messages"]) == 40 and big["messages"][-1]["data"]["pad"] == "x" * 200
    with pytest.raises(NotFound):
        api.history("plain.group")
    # An at-most-once group takes no key; the client sends none.
    assert api.publish("plain.group", 1) == {"ok": True}


def test_presence(server: GroupcastServer) -> None:
    api = Client(server.url)

    async def scenario() -> None:
        a = await WebsocketClient.connect(server.ws_url, token=mint_token(JWT_SECRET, "u1", join=["*"]))
        b = await WebsocketClient.connect(server.ws_url, token=mint_token(JWT_SECRET, "u2", join=["*"]))
        await a.join("pres.room")
        await b.join("pres.room")
        p = api.presence("pres.room")
        assert p["count"] == 2 and sorted(m["user"] for m in p["members"]) == ["u1", "u2"]
        assert api.presence("pres.room", count_only=True)["count"] == 2
        await a.close()
        await b.close()

    asyncio.run(scenario())
    with pytest.raises(NotFound):
        api.presence("nopres")


def test_bad_input_is_refused_before_any_request(fault: Fault) -> None:
    api = Client(fault.url)
    for bad in ("", ".a", "a.", "a..b", "a b", "x" * 101, "a/b"):
        with pytest.raises(TypeError):
            api.publish(bad, 1)
    with pytest.raises(TypeError):
        api.send("nodot", 1)
    with pytest.raises(TypeError):
        api.publish_batch([{"data": 1}])
    with pytest.raises(TypeError):
        api.publish("ok", {1, 2})  # not JSON
    assert fault.requests == []


def test_api_key_and_errors(binary: str) -> None:
    with GroupcastServer(binary, env={"API_KEY": "right-key"}) as s:
        with pytest.raises(Unauthorized) as e:
            Client(s.url, "wrong-key").publish("g", 1)
        assert e.value.status == 401 and e.value.code == "unauthorized"
        assert Client(s.url, "right-key").publish("g", 1) == {"ok": True}
        with pytest.raises(GroupcastError) as e:
            Client(s.url, "right-key").publish("g", "x" * (2 << 20))
        assert e.value.status == 413


def test_503_is_retried_with_the_same_idempotency_key(fault: Fault) -> None:
    fault.answers = [(503, b'{"error":{"code":"unavailable","message":"nats"}}')] * 2
    api = Client(fault.url, group_policies="chat.*=recoverable", retries=2)
    assert api.publish("chat.x", 1) == {"ok": True}
    keys = [h["Idempotency-Key"] for _, _, h in fault.requests]
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0]


def test_unavailable_after_bounded_retries_is_channel_full(fault: Fault, closed_url: str) -> None:
    fault.answers = [(503, b'{"error":{"code":"unavailable","message":"nats"}}')] * 10
    with pytest.raises(ChannelFull) as e:
        Client(fault.url, retries=3).publish("g", 1)
    assert isinstance(e.value, Unavailable) and e.value.status == 503
    assert len(fault.requests) == 4
    t = time.monotonic()
    with pytest.raises(ChannelFull):
        Client(closed_url, retries=2).publish("g", 1)
    assert time.monotonic() - t < 2


def test_keep_alive_across_async_to_sync_and_loops(fault: Fault) -> None:
    api = AsyncClient(fault.url)
    for _ in range(20):
        async_to_sync(api.publish)("g", 1)  # a new loop and thread each time
    assert fault.connections == 1

    async def many() -> None:
        for _ in range(20):
            await api.publish("g", 1)

    asyncio.run(many())
    assert fault.connections == 2  # one for that loop
    assert len(fault.requests) == 40


def test_a_connection_closed_while_idle_is_replaced_without_loss(fault: Fault) -> None:
    fault.close_after = 1  # the server closes each connection after one answer
    api = AsyncClient(fault.url, retries=0)

    async def scenario() -> None:
        for i in range(5):
            await api.publish("g", i)
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    sync = Client(fault.url, retries=0)
    for i in range(5):
        sync.publish("g", i)
        time.sleep(0.01)
    assert len(fault.requests) == 10


def test_calls_in_flight_are_bounded(fault: Fault) -> None:
    fault.delay = 0.05
    api = AsyncClient(fault.url, max_in_flight=2)

    async def scenario() -> list[object]:
        return await asyncio.gather(*(api.publish("g", i) for i in range(8)))

    assert asyncio.run(scenario()) == [{"ok": True}] * 8
    assert fault.max_active == 2

    fault.max_active = 0
    sync = Client(fault.url, max_in_flight=3)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda i: sync.publish("g", i), range(12))) == [{"ok": True}] * 12
    assert fault.max_active == 3


def test_a_full_bound_refuses_after_the_timeout(fault: Fault) -> None:
    fault.delay = 0.5
    api = Client(fault.url, max_in_flight=1, timeout=1.0, retries=0)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(api.publish, "g", 1)
        time.sleep(0.1)
        api._ep.timeout = 0.1  # the second caller waits 0.1 s for a slot
        with pytest.raises(Unavailable, match="in flight"):
            api.publish("g", 2)
        api._ep.timeout = 1.0
        assert first.result() == {"ok": True}
