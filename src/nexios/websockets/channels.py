"""``Channel`` and ``ChannelBox``: the names Nexios users know, on the channel layer.

::

    channel = Channel(websocket=ws, payload_type="json", expires=3600)
    await ChannelBox.add_channel_to_group(channel, group_name="room")
    await ChannelBox.group_send(group_name="room", payload={"text": "hi"}, save_history=True)

Groups live in the app's channel layer (``app.channels``), so ``group_send`` reaches the
group's members in every process that shares the app's broker, and a connection leaves
its groups when it closes. ``ws.join(group)`` and ``app.channels.publish(group, payload)``
are the short forms of the same thing.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from nexios.channels.layer import ChannelLayer, current_layer
from nexios.exceptions import ImproperlyConfigured
from nexios.websockets.base import WebSocket, WebSocketState

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Channel", "ChannelBox", "PayloadTypeEnum"]


class PayloadTypeEnum(enum.StrEnum):
    JSON = "json"
    TEXT = "text"
    BYTES = "bytes"


class Channel:
    """A WebSocket connection as a member of groups, with how its messages are encoded."""

    def __init__(
        self,
        websocket: WebSocket,
        payload_type: str | PayloadTypeEnum = "json",
        expires: float | None = None,
    ) -> None:
        try:
            self.payload_type = PayloadTypeEnum(payload_type).value
        except ValueError:
            raise ImproperlyConfigured(
                f"payload_type is {payload_type!r}: use 'json', 'text' or 'bytes'."
            ) from None
        self.websocket = websocket
        self.expires = expires
        self.uuid = uuid.uuid4()
        self.created = time.time()
        self.last_active = self.created
        self.metadata: dict[str, Any] = {}

    @property
    def id(self) -> str:
        return str(self.uuid)

    @property
    def encoding(self) -> Literal["json", "text", "bytes"]:
        """How group messages are sent to this channel."""
        kind: Literal["json", "text", "bytes"] = self.payload_type  # type: ignore[assignment]
        return kind

    @property
    def is_expired(self) -> bool:
        return self.expires is not None and time.time() - self.last_active > self.expires

    @property
    def is_active(self) -> bool:
        """Connected, and not idle for longer than ``expires`` seconds."""
        return self.websocket.connection_state is WebSocketState.CONNECTED and not self.is_expired

    async def send(self, payload: Any) -> None:
        """Send ``payload`` to this channel alone, encoded by ``payload_type``."""
        if self.payload_type == "json":
            await self.websocket.send_json(payload)
        elif self.payload_type == "text":
            await self.websocket.send_text(payload if isinstance(payload, str) else str(payload))
        else:
            await self.websocket.send_bytes(
                payload if isinstance(payload, bytes) else str(payload).encode()
            )
        self.last_active = time.time()

    _send = send  # the published nexios spelling

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.websocket.close(code, reason)

    def __repr__(self) -> str:
        return f"<Channel {self.id} {self.payload_type} active={self.is_active}>"


class ChannelBox:
    """Groups of channels, as class methods (one box per process, on the app's layer)."""

    _channels: dict[str, dict[str, Channel]] = {}

    @staticmethod
    def _layer(channel: Channel | None = None) -> ChannelLayer:
        if channel is not None and channel.websocket.channels is not None:
            return channel.websocket.channels
        return current_layer()

    @classmethod
    async def add_channel_to_group(cls, channel: Channel, group_name: str = "default") -> bool:
        """Add ``channel`` to ``group_name``; False if it was there already."""
        members = cls._channels.setdefault(group_name, {})
        if channel.id in members:
            return False
        await cls._layer(channel).join(channel.websocket, group_name, encoding=channel.encoding)
        members[channel.id] = channel
        return True

    @classmethod
    async def remove_channel_from_group(cls, channel: Channel, group_name: str) -> bool:
        """Remove ``channel`` from ``group_name``; False if it was not in it."""
        members = cls._channels.get(group_name)
        if not members or members.pop(channel.id, None) is None:
            return False
        if not members:
            del cls._channels[group_name]
        await cls._layer(channel).leave(channel.websocket, group_name)
        return True

    @classmethod
    async def group_send(
        cls,
        group_name: str = "default",
        payload: Any = None,
        save_history: bool = False,
    ) -> int:
        """Send ``payload`` to every channel of ``group_name``, in every process.

        Expired channels are removed first. Returns how many local channels it
        reaches, an int with the message's ``position`` in the group's log. Every
        message is logged (``save_history`` is kept for its name; docs/choices.md).
        """
        for channel in list(cls._channels.get(group_name, {}).values()):
            if channel.is_expired or channel.websocket.connection_state is (
                WebSocketState.DISCONNECTED
            ):
                await cls.remove_channel_from_group(channel, group_name)
        return await cls._layer().publish(
            group_name, {} if payload is None else payload, save_history=save_history
        )

    @classmethod
    async def show_groups(cls) -> dict[str, list[Channel]]:
        """The groups of this process and their channels."""
        return {group: list(members.values()) for group, members in cls._channels.items()}

    get_groups = show_groups

    @classmethod
    async def flush_groups(cls) -> None:
        """Remove every channel from every group (the connections stay open)."""
        for group, members in list(cls._channels.items()):
            for channel in list(members.values()):
                await cls.remove_channel_from_group(channel, group)

    @classmethod
    async def show_history(
        cls, group_name: str, count: int | None = None
    ) -> Sequence[dict[str, Any]]:
        """The saved messages of ``group_name``: ``{"id", "timestamp", "payload"}``."""
        return await cls._layer().history(group_name, count)

    @classmethod
    async def flush_history(cls, group_name: str | None = None) -> None:
        """Forget the saved messages of ``group_name`` (of every group with None)."""
        await cls._layer().clear_history(group_name)
