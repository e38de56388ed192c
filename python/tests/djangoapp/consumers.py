"""The consumer under test: what a ported Channels chat consumer does."""

from __future__ import annotations

import threading
from typing import Any

from groupcast.django import Consumer

#: What disconnect saw, for the tests (this app runs in the test process).
disconnects: list[dict[str, Any]] = []
disconnected = threading.Condition()


class RoomConsumer(Consumer):
    def connect(self) -> None:
        if not self.user.is_authenticated:
            self.refuse("login_required", "log in first")
        self.group_add(f"user.{self.user.pk}")
        self.permit(join=["room.*", f"user.{self.user.pk}"], send=["room.*"])
        self.info = {"name": self.user.username}

    def join(self, group: str) -> None:
        if group == "room.secret" and not self.user.is_staff:
            self.refuse("not_member", "members only")

    def send(self, group: str, data: Any) -> Any:
        if "spam" in str(data.get("text", "")):
            self.refuse("spam", "no spam here")
        return {**data, "by": self.user.username}

    def receive(self, content: dict[str, Any]) -> Any:
        if content.get("type") == "whoami":
            return {"user": self.user.username, "channel": self.channel_name}
        if content.get("type") == "shout":
            self.group_send_others(content["group"], {"type": "shout", "text": content.get("text")})
            return "sent"
        if content.get("type") == "boom":
            raise RuntimeError("a bug in the consumer")
        return super().receive(content)

    def disconnect(self, code: int) -> None:
        with disconnected:
            disconnects.append({"user": self.user.username, "channel": self.channel_name,
                                "groups": sorted(self.groups), "code": code})
            disconnected.notify_all()
