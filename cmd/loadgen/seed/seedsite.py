"""The seed system as its users run it: Django Channels under daphne, with
channels_redis as the channel layer, speaking the groupcast protocol subset
that loadgen uses (welcome, join and leave answered by ack, ping by pong,
deliveries, POST /api/groups/<group>/messages).

    REDIS_URL=redis://127.0.0.1:6379/0 PYTHONPATH=cmd/loadgen/seed \\
        /usr/bin/python3 -m daphne -b 127.0.0.1 -p 8092 seedsite:application

A publish builds the delivery frame once and hands it to group_send; each
member's consumer sends it as it is. Everything else is Channels' defaults.
"""

import json
import os
import re

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="seed-system-benchmark-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["channels"],
    MIDDLEWARE=[],
    DATA_UPLOAD_MAX_MEMORY_SIZE=1 << 20,
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
        }
    },
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.exceptions import RequestDataTooBig  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

# groupcast's group name rule (PROTOCOL.md, "Names").
GROUP = re.compile(r"^(?!\.)(?!.*\.\.)[A-Za-z0-9_.-]{1,100}(?<!\.)$")


def answer(typ, frame_id, **fields):
    """An answer frame, carrying the id it answers when there was one."""
    out = {"type": typ}
    if frame_id is not None:
        out["id"] = frame_id
    out.update(fields)
    return json.dumps(out, separators=(",", ":"))


class Consumer(AsyncWebsocketConsumer):
    """One WebSocket connection."""

    async def connect(self):
        self.joined = set()
        await self.accept()
        await self.send(text_data=answer("welcome", None, channel=self.channel_name, node="seed", region=""))

    async def receive(self, text_data=None, bytes_data=None):
        try:
            m = json.loads(text_data)
            if not isinstance(m, dict):
                raise ValueError
        except (TypeError, ValueError):
            await self.send(text_data=answer("error", None, code="bad_frame", message="not a JSON object"))
            return
        typ, frame_id, group = m.get("type"), m.get("id"), m.get("group")
        if typ == "ping":
            await self.send(text_data=answer("pong", frame_id))
        elif typ not in ("join", "leave"):
            await self.send(text_data=answer("error", frame_id, code="unknown_type", message="unknown frame type"))
        elif not isinstance(group, str) or not GROUP.match(group):
            await self.send(text_data=answer("error", frame_id, code="bad_group", message="invalid group name"))
        elif typ == "join":
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.add(group)
            await self.send(text_data=answer("ack", frame_id))
        else:
            await self.channel_layer.group_discard(group, self.channel_name)
            self.joined.discard(group)
            await self.send(text_data=answer("ack", frame_id))

    async def deliver(self, event):
        await self.send(text_data=event["frame"])

    async def disconnect(self, code):
        for group in getattr(self, "joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)


def error(status, code, message):
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


async def publish(request, group):
    if request.method != "POST":
        return error(405, "method_not_allowed", "POST only")
    try:
        body = request.body.decode()
        json.loads(body)
    except RequestDataTooBig:
        return error(413, "too_large", "body over 1 MiB")
    except ValueError:
        return error(400, "bad_json", "the body is not JSON")
    if not GROUP.match(group):
        return error(400, "bad_group", "invalid group name")
    frame = '{"type":"message","group":"%s","data":%s}' % (group, body)
    await get_channel_layer().group_send(group, {"type": "deliver", "frame": frame})
    return HttpResponse(status=202)


async def readyz(request):
    return HttpResponse("ok")


urlpatterns = [
    path("api/groups/<str:group>/messages", publish),
    path("readyz", readyz),
]

application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter([path("ws", Consumer.as_asgi())]),
    }
)
