"""GroupcastChannelLayer as Channels loads it, against the real binary."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from groupcast.errors import Unsupported
from groupcast.layers import GroupcastChannelLayer
from groupcast.testing import GroupcastServer, WebsocketClient

from conftest import JWT_SECRET
from groupcast import mint_token


def layer_for(url: str, **config: object) -> GroupcastChannelLayer:
    """The layer as Channels builds it from CHANNEL_LAYERS."""
    from django.conf import settings

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "groupcast.layers.GroupcastChannelLayer",
                                           "CONFIG": {"url": url, **config}}}
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    layer = get_channel_layer()
    assert isinstance(layer, GroupcastChannelLayer)
    return layer


def test_group_send_from_sync_and_async_code(server: GroupcastServer) -> None:
    layer = layer_for(server.url, capacity=50, expiry=10)  # other layers' settings load

    async def scenario() -> None:
        tok = mint_token(JWT_SECRET, 1, join=["*"])
        async with await WebsocketClient.connect(server.ws_url, token=tok) as ws:
            await ws.join("chat.lobby")
            # A sync view or a Celery task: a fresh event loop per call.
            await asyncio.get_running_loop().run_in_executor(None, lambda: async_to_sync(layer.group_send)(
                "chat.lobby", {"type": "chat.message", "text": "from a view"}))
            m = await ws.receive_message()
            assert m["data"] == {"type": "chat.message", "text": "from a view"}
            await layer.group_send("chat.lobby", {"type": "chat.message", "text": "from async"})
            assert (await ws.receive_message())["data"]["text"] == "from async"

            await layer.send(ws.channel, {"type": "direct", "n": 1})
            m = await ws.receive_message()
            assert m["channel"] == ws.channel and m["data"] == {"type": "direct", "n": 1}

            await layer.group_add("chat.other", ws.channel)
            assert (await ws.receive())["type"] == "joined"
            await layer.group_send("chat.other", {"type": "x"})
            assert (await ws.receive_message())["group"] == "chat.other"
            await layer.group_discard("chat.other", ws.channel)
            assert (await ws.receive())["type"] == "left"

    asyncio.run(scenario())


def test_names_and_messages_are_checked_as_channels_does(server: GroupcastServer) -> None:
    layer = layer_for(server.url)
    for bad in ("a b", "x" * 100, "", "é", ".lead", "trail.", "a..b"):
        with pytest.raises(TypeError):
            async_to_sync(layer.group_send)(bad, {"type": "x"})
    with pytest.raises(TypeError):
        async_to_sync(layer.send)("specific.abc!def", {"type": "x"})  # a Channels name, not a groupcast one
    with pytest.raises(TypeError):
        async_to_sync(layer.group_add)("g", "nodot")
    with pytest.raises(TypeError):
        async_to_sync(layer.group_send)("g", ["not", "a", "dict"])


def test_receive_new_channel_and_flush_say_why(server: GroupcastServer) -> None:
    layer = layer_for(server.url)
    for call, args in ((layer.receive, ("a.b",)), (layer.new_channel, ()), (layer.flush, ())):
        with pytest.raises(Unsupported, match="groupcast"):
            async_to_sync(call)(*args)
    assert layer.extensions == ["groups"]


def test_unavailable_is_caught_as_channel_full(closed_url: str) -> None:
    layer = layer_for(closed_url, retries=1)
    try:
        async_to_sync(layer.group_send)("g", {"type": "x"})
    except ChannelFull as e:
        assert "cannot connect" in str(e)
    else:
        pytest.fail("no ChannelFull")
