"""The consumer base class: one instance per hook call."""

from __future__ import annotations

from typing import Any, NoReturn

from asgiref.sync import async_to_sync
from django.http import HttpRequest


class Refuse(Exception):
    """Raised in a consumer method to refuse: the client gets ``code``
    (a-z, 0-9, _; 1-64 characters) and ``message``; a refused connect is
    answered 4xx on the upgrade."""

    def __init__(self, code: str = "forbidden", message: str = "refused by the application") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Consumer:
    """Subclass and override what the old Channels consumer did:

    - ``connect()``: accept by returning; refuse with ``self.refuse(code)``;
      ``self.group_add(g)`` joins groups at once, ``self.permit(join=...,
      send=...)`` sets what the connection may join and send to,
      ``self.info`` its presence info. The user is ``self.user``
      (``request.user``, from Django's session via the forwarded cookie);
      an authenticated user becomes the connection's user.
    - ``join(group)``: a client joins group; return to allow.
    - ``send(group, data)``: a client publishes; return None to publish
      data as it is, or other data to publish that instead.
    - ``receive(content)``: a frame of the application's own type (as
      ``receive_json``); what it returns is the reply the client gets.
    - ``disconnect(code)``: the connection closed; ``self.groups`` are the
      groups it was in.

    Every method runs in a plain Django view (WSGI), so the ORM and
    ``async_to_sync(self.channel_layer.group_send)`` work as in any view.
    """

    #: The CHANNEL_LAYERS alias used by group_add, group_discard and send_json.
    channel_layer_alias = "default"

    def __init__(self, request: HttpRequest, call: dict[str, Any]) -> None:
        self.request = request
        self.call = call
        self.event: str = call.get("event", "")
        self.user = getattr(request, "user", None)
        self.channel_name: str | None = call.get("channel")
        self.groups: list[str] = list(call.get("groups") or [])
        self.scope = {"type": "websocket", "user": self.user, "session": getattr(request, "session", None),
                      "headers": request.headers, "client": call.get("remote_ip")}
        self.info: Any = None
        self._answer: dict[str, Any] = {}

    # The methods to override.

    def connect(self) -> None:
        """A new connection, before the upgrade. Default: accept."""

    def join(self, group: str) -> None:
        """A client joins group. Default: allow."""

    def send(self, group: str, data: Any) -> Any:
        """A client publishes data to group. Default: as it is."""
        return None

    def receive(self, content: dict[str, Any]) -> Any:
        """A frame whose type the server does not know. Default: refused."""
        self.refuse("unknown_type", f"no handler for frame type {content.get('type')!r}")

    def disconnect(self, code: int) -> None:
        """The connection closed with code."""

    # Helpers.

    def refuse(self, code: str = "forbidden", message: str = "refused by the application") -> NoReturn:
        """Refuses the call (raises :class:`Refuse`)."""
        raise Refuse(code, message)

    def close(self, code: int = 4000) -> NoReturn:
        """Channels' ``self.close()`` in connect: refuses the connection."""
        raise Refuse("forbidden", f"closed by the application ({code})")

    def permit(self, *, join: list[str] | None = None, send: list[str] | None = None) -> None:
        """In connect: what the connection may join and send to (group
        names or prefixes ending in ``*``)."""
        if join is not None:
            self._answer["join"] = list(join)
        if send is not None:
            self._answer["send"] = list(send)

    @property
    def channel_layer(self) -> Any:
        """The Channels layer (a GroupcastChannelLayer)."""
        from channels.layers import get_channel_layer

        return get_channel_layer(self.channel_layer_alias)

    def group_add(self, group: str) -> None:
        """Makes this connection join group: at once in connect, through the
        server API otherwise."""
        if self.event == "connect":
            self._answer.setdefault("groups", []).append(group)
        else:
            async_to_sync(self.channel_layer.group_add)(group, self._channel())
        self.groups.append(group)

    def group_discard(self, group: str) -> None:
        """Makes this connection leave group."""
        async_to_sync(self.channel_layer.group_discard)(group, self._channel())

    def group_send_others(self, group: str, message: dict[str, Any]) -> None:
        """Publishes message to every member of group but this connection
        (Channels' broadcast to the others); needs GroupcastChannelLayer."""
        client = getattr(self.channel_layer, "client", None)
        if client is None:
            raise RuntimeError("group_send_others needs groupcast.layers.GroupcastChannelLayer")
        async_to_sync(client.publish)(group, message, exclude=self._channel())

    def send_json(self, content: Any) -> None:
        """Sends content to this connection alone (a direct message)."""
        async_to_sync(self.channel_layer.send)(self._channel(), content)

    def _channel(self) -> str:
        if not self.channel_name:
            raise RuntimeError("this connection has no channel name yet (connect runs before the upgrade)")
        return self.channel_name

    # Dispatch, used by the views.

    def answer(self) -> dict[str, Any]:
        """Runs the method for this call's event and returns the hook's
        answer. Raises :class:`Refuse` to refuse."""
        ev = self.event
        if ev == "connect":
            self.connect()
            user = self.user
            if user is not None and getattr(user, "is_authenticated", False):
                self._answer["user"] = str(user.pk)
            if self.info is not None:
                self._answer["info"] = self.info
            return self._answer
        if ev == "join":
            self.join(self.call["group"])
            return {}
        if ev == "send":
            data = self.send(self.call["group"], self.call.get("data"))
            return {} if data is None else {"data": data}
        if ev == "receive":
            return {"reply": self.receive(self.call.get("data") or {})}
        if ev == "disconnect":
            self.disconnect(int(self.call.get("code") or 0))
            return {}
        raise Refuse("invalid_data", f"unknown hook event {ev!r}")
