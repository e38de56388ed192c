"""A Django Channels layer backend that publishes through a groupcast server.

::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "groupcast.layers.GroupcastChannelLayer",
            "CONFIG": {"url": "http://groupcast:8080", "api_key": os.environ["GROUPCAST_API_KEY"]},
        }
    }

The groupcast server holds every socket, so this layer only publishes:
``group_send`` and ``send`` deliver to connections, ``group_add`` and
``group_discard`` change a connection's groups. ``receive``,
``new_channel`` and ``flush`` raise :class:`~groupcast.errors.Unsupported`.
"""

from __future__ import annotations

from typing import Any

from channels.layers import BaseChannelLayer

from .client import AsyncClient, valid_channel, valid_group
from .errors import Unsupported

__all__ = ["GroupcastChannelLayer"]


class GroupcastChannelLayer(BaseChannelLayer):
    """Channels' layer API over groupcast's server API.

    ``group_send(group, message)`` publishes the message dict, its
    ``"type"`` included, as the delivery's ``data``: members receive
    ``{"type":"message","group":G,"data":message}``. ``send(channel,
    message)`` delivers to the one connection whose channel name (from its
    welcome frame) is channel. Messages must be JSON-serializable.

    Calls work from async code and through ``async_to_sync`` (pooled
    keep-alive connections either way), at most ``max_in_flight`` at once.
    503s and network errors are retried ``retries`` times when a retry
    cannot deliver twice (in groups that keep history, per
    ``group_policies``, with an idempotency key), then raise
    :class:`~groupcast.errors.Unavailable`, a ``ChannelFull``. Invalid
    names raise ``TypeError`` as Channels' own layers do.

    ``expiry``, ``capacity`` and ``channel_capacity`` are accepted so that
    settings written for other layers load, and have no effect: the server's
    OUTBOX_FRAMES / OUTBOX_BYTES bound each connection, and memberships last
    as long as the connection.
    """

    extensions = ["groups"]

    def __init__(self, url: str = "http://127.0.0.1:8080", api_key: str | None = None, *, timeout: float = 5.0,
                 retries: int = 2, max_in_flight: int = 64, group_policies: str | None = None,
                 expiry: int = 60, capacity: int = 100, channel_capacity: dict | None = None) -> None:
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.client = AsyncClient(url, api_key, timeout=timeout, retries=retries, max_in_flight=max_in_flight,
                                  group_policies=group_policies)

    def _check_group(self, group: str) -> None:
        self.valid_group_name(group)  # Channels' rule, its TypeError
        if not valid_group(group):
            raise TypeError(f"Group name {group!r} has a leading or trailing '.' or '..', which groupcast refuses")

    def _check_channel(self, channel: str) -> None:
        self.valid_channel_name(channel)
        if not valid_channel(channel):
            raise TypeError(f"Channel name {channel!r} is not a groupcast channel (<node>.<connection>, from a welcome frame)")

    @staticmethod
    def _check_message(message: Any) -> None:
        if not isinstance(message, dict):
            raise TypeError("message is not a dict")

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publishes message to every member of group, on every instance."""
        self._check_group(group)
        self._check_message(message)
        await self.client.publish(group, message)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Delivers message to the one connection channel."""
        self._check_channel(channel)
        self._check_message(message)
        await self.client.send(channel, message)

    async def group_add(self, group: str, channel: str) -> None:
        """Makes the connection channel join group; it is told
        ``{"type":"joined","group":G}``."""
        self._check_group(group)
        self._check_channel(channel)
        await self.client.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Makes the connection channel leave group."""
        self._check_group(group)
        self._check_channel(channel)
        await self.client.group_discard(group, channel)

    _why = ("the groupcast server holds the sockets, so a Django process has no channel to receive on; "
            "handle client frames with groupcast.django's Consumer instead")

    async def receive(self, channel: str) -> dict[str, Any]:
        """Not supported: see :class:`~groupcast.errors.Unsupported`."""
        raise Unsupported(f"GroupcastChannelLayer.receive: {self._why}")

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Not supported: channels are made by the server, one per connection."""
        raise Unsupported(f"GroupcastChannelLayer.new_channel: {self._why}")

    async def flush(self) -> None:
        """Not supported: groupcast keeps no layer state to flush."""
        raise Unsupported("GroupcastChannelLayer.flush: groupcast keeps no layer state a backend could flush; "
                          "memberships end with their connections")

    def close(self) -> None:
        """Closes the pooled connections."""
        self.client.close()
