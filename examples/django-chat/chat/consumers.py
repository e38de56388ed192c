"""The Channels tutorial's ChatConsumer, ported to groupcast.django.

Was (channels.generic.websocket.WebsocketConsumer, under daphne):

    def connect(self):
        self.room_group_name = "chat_%s" % self.scope["url_route"]["kwargs"]["room_name"]
        async_to_sync(self.channel_layer.group_add)(self.room_group_name, self.channel_name)
        self.accept()
    def receive(self, text_data): ... group_send(..., {"type": "chat_message", "message": message})
    def chat_message(self, event): self.send(text_data=json.dumps({"message": event["message"]}))

Now the page joins room.<name> itself with /client.js, every member gets
each group_send's message dict as the delivery's data (no per-recipient
chat_message handler), and this class decides who may do what.
"""

from __future__ import annotations

import logging
from typing import Any

from groupcast.django import Consumer

from .models import Message

log = logging.getLogger(__name__)

#: Rooms nobody may join (to show a refusal).
CLOSED_ROOMS = {"room.closed"}


class ChatConsumer(Consumer):
    def connect(self) -> None:
        # request.user comes from Django's session, as under AuthMiddlewareStack.
        if not self.user.is_authenticated:
            self.refuse("login_required", "log in to chat")
        self.permit(join=["room.*"], send=[])  # messages go through Django (post_message)
        self.info = {"name": self.user.username}

    def join(self, group: str) -> None:
        if group in CLOSED_ROOMS:
            self.refuse("room_closed", "this room is closed")

    def receive(self, content: dict[str, Any]) -> Any:
        # Channels' receive_json for frames of the page's own types.
        if content.get("type") == "history":
            room = str(content.get("room", ""))
            msgs = Message.objects.filter(room=room).order_by("-id")[:20]
            return [{"text": m.text, "user": m.user.username} for m in reversed(msgs)]
        return super().receive(content)

    def disconnect(self, code: int) -> None:
        log.info("%s left %s (close code %s)", self.user, self.groups, code)
