"""The channel layer: local groups, encode-once fan-out, and the broker between processes.

::

    publish(group, payload) ─┬─> encode once ─> local members' outboxes ─> writers ─> sockets
                             └─> broker.publish ─> other processes' layers ─> their members

Delivery is **at most once**. A message reaches the members of a group that are
connected when it is fanned out, in each process that shares the broker; it is lost for
a member whose outbox drops it (slow consumer, see ``outbox``), for a process the broker
cannot reach at that moment, and for everybody elsewhere when the broker is down (the
local members still get it). Each of these is counted in ``stats`` and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import orjson

from nexios._frames import BINARY, TEXT, frame_header
from nexios.channels.brokers.base import (
    Broker,
    BrokerOutcomeUnknown,
    BrokerRefused,
    BrokerUnavailable,
)
from nexios.channels.brokers.memory import MemoryBroker
from nexios.channels.log import PayloadKind
from nexios.channels.outbox import Outbox, SlowConsumerPolicy, send_together
from nexios.exceptions import ImproperlyConfigured, WebSocketStateError
from nexios.types import Message

if TYPE_CHECKING:
    from nexios.websockets.base import WebSocket

__all__ = ["ChannelLayer", "ChannelStats", "broker_from_url", "current_layer"]

logger = logging.getLogger("nexios.channels")

Encoding = Literal["auto", "json", "text", "bytes"]

# Broker channel names: user groups, and the one channel for messages addressed by id.
_GROUP = "g:"
_DIRECT = "direct"

# Fan-out holds the event loop for at most about this long (seconds) before it lets the
# loop run: a handler publishing in a loop, or one publish to a huge group, must not
# freeze every other connection (HTTP requests, pings, SIGTERM).
SLICE = 0.005
# A fan-out larger than this many members reads the clock between chunks of it.
_CHUNK = 512


def broker_from_url(url: str | None) -> Broker:
    """The broker a URL names: ``memory://[name]`` or ``redis://host:port/db``."""
    if not url:
        return MemoryBroker()
    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        return MemoryBroker(rest)
    if scheme in ("redis", "rediss", "unix"):
        from nexios.channels.brokers.redis import RedisBroker

        return RedisBroker(url)
    raise ImproperlyConfigured(
        f"Unknown broker URL {url!r}: use memory:// (one process) or redis://host:port/db."
    )


_current: ChannelLayer | None = None


def current_layer() -> ChannelLayer:
    """The layer of the app that started last in this process (for ``ChannelBox``)."""
    if _current is None:
        raise ImproperlyConfigured(
            "No channel layer is running in this process: start the NexiosApp (its "
            "lifespan starts app.channels), or add a channel to a group first."
        )
    return _current


class ChannelStats:
    """Counters of what the layer did and lost; a readiness probe or metrics can read them.

    Every message handed to a shared broker ends in exactly one of ``published_remote``,
    ``publish_failed`` and ``publish_unknown``; see docs/channels.md.
    """

    __slots__ = (
        "closed_slow",
        "delivered",
        "dropped",
        "history_failed",
        "missed_remote",
        "publish_failed",
        "publish_refused",
        "publish_unknown",
        "published",
        "published_remote",
        "received_remote",
    )

    def __init__(self) -> None:
        self.published = 0  # publish() and send_to() calls
        self.delivered = 0  # messages queued for local members
        self.dropped = 0  # messages dropped by full outboxes
        self.closed_slow = 0  # connections closed by the "close" policy
        # Messages for the other processes: the broker took them (Redis answered) ...
        self.published_remote = 0
        # ... they certainly did not reach the broker: the other processes lost them ...
        self.publish_failed = 0
        # ... (of those, refused at once because the broker was known down) ...
        self.publish_refused = 0
        # ... or sent with no reply: they may or may not have reached the other processes.
        self.publish_unknown = 0
        self.received_remote = 0  # messages from other processes
        # Messages of other processes this one did not receive (gaps in their numbers).
        self.missed_remote = 0
        # Messages published with save_history=True that the broker could not save.
        self.history_failed = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"ChannelStats({self.as_dict()})"


class _Sequences:
    """Per-publisher message numbers, in one place: stamped on what this process
    publishes (per channel, 1, 2, ...), checked on what it receives (per channel and
    publishing process), so that a gap counts the messages missed.

    Bounded: this process numbers at most ``CHANNELS`` channels (the least recently
    published is forgotten, and starts again at 1, which a receiver takes as a fresh
    start), and follows at most ``ORIGINS`` publishers per channel it is subscribed to
    (a channel's numbers are forgotten when it unsubscribes).
    """

    CHANNELS = 65_536
    ORIGINS = 64

    __slots__ = ("_last", "_next")

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._last: dict[str, dict[str, int]] = {}

    def stamp(self, channel: str) -> int:
        """The number of this process's next message on *channel*."""
        numbers = self._next
        n = numbers.pop(channel, 0) + 1  # popped and put back: the most recent, last
        numbers[channel] = n
        if len(numbers) > self.CHANNELS:
            del numbers[next(iter(numbers))]
        return n

    def missed(self, origin: str, channel: str, n: int) -> int:
        """How many messages of *origin* on *channel* were missed before number *n*;
        -1 for a message that comes after a later one (it was counted missed then)."""
        seen = self._last.get(channel)
        if seen is None:
            seen = self._last[channel] = {}
        last = seen.get(origin)
        if last is None or n == 1:  # the first one seen, or the publisher started again
            seen[origin] = n
            if len(seen) > self.ORIGINS:
                del seen[next(iter(seen))]
            return 0
        if n > last:
            seen[origin] = n
            return n - last - 1
        # Concurrent publishes of one process may reach the broker in another order.
        return -1

    def forget(self, channel: str) -> None:
        self._last.pop(channel, None)


# A gap in another process's numbers is logged at most once in this many seconds (the
# count goes on).
_MISSED_LOG_INTERVAL = 10.0


def _encode(payload: Any) -> tuple[PayloadKind, bytes]:
    """Encode a payload once: str as text, bytes as binary, anything else as JSON."""
    if isinstance(payload, str):
        return "text", payload.encode()
    if isinstance(payload, bytes | bytearray | memoryview):
        return "bytes", bytes(payload)
    return "json", orjson.dumps(payload)


def _decode(kind: str, body: bytes) -> Any:
    if kind == "json":
        return orjson.loads(body)
    if kind == "text":
        return body.decode()
    return body


def _form(kind: str, body: bytes, encoding: str) -> tuple[Message, bytes]:
    """The ASGI message a member with ``encoding`` gets for a payload of ``kind``, and the
    same message framed (for servers that write it as it is: ``Outbox.push``)."""
    if kind == "bytes" or encoding == "bytes":
        return {"type": "websocket.send", "bytes": body}, frame_header(BINARY, len(body)) + body
    if encoding == "json" and kind == "text":
        body = orjson.dumps(body.decode())
    return {"type": "websocket.send", "text": body.decode()}, frame_header(TEXT, len(body)) + body


class ChannelLayer:
    """Groups of connections, in this process and, through the broker, in all of them."""

    def __init__(
        self,
        broker: Broker | str | None = None,
        *,
        outbox_size: int = 256,
        slow_consumer: SlowConsumerPolicy = "drop_oldest",
        history_size: int = 100,
    ) -> None:
        if broker is None:
            broker = os.environ.get("NEXIOS_BROKER_URL") or None
        self.broker: Broker = broker if isinstance(broker, Broker) else broker_from_url(broker)
        self.outbox_size = outbox_size
        self.slow_consumer: SlowConsumerPolicy = slow_consumer
        self.history_size = history_size
        self.origin = uuid.uuid4().hex
        self.stats = ChannelStats()
        self._groups: dict[str, dict[WebSocket, Outbox]] = {}
        self._members: dict[WebSocket, Outbox] = {}
        self._by_id: dict[str, set[Outbox]] = {}
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._listener: asyncio.Task[None] | None = None
        self._publish_down = False
        self._history_down = False
        self._sequences = _Sequences()
        # The counters when the current outage began, and when (for its summary).
        self._outage_start: tuple[float, int, int, int] = (0.0, 0, 0, 0)
        self._missed_logged: float | None = None  # time.monotonic() of the last log
        # When the current slice of fan-out work began (perf_counter); 0.0 once the
        # event loop has had a turn since (`_slice_over`, scheduled with call_soon).
        self._slice_start = 0.0

    # ------------------------------------------------------------------ life

    @property
    def healthy(self) -> bool:
        """Whether messages reach the other processes now (always True on memory://)."""
        return self.broker.healthy

    async def start(self) -> None:
        """Connect the broker and start listening (the app does it at startup)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.broker.start()
            # Listen first: a broker confirms subscriptions through its listen loop.
            self._listener = asyncio.get_running_loop().create_task(self._listen())
            await asyncio.sleep(0)
            await self.broker.subscribe(_DIRECT)
            self._started = True
            global _current
            _current = self

    async def stop(self) -> None:
        """Close every outbox, stop listening and disconnect the broker."""
        for outbox in list(self._members.values()):
            outbox.close()
        self._members.clear()
        self._groups.clear()
        self._by_id.clear()
        if not self._started:
            return
        self._started = False
        global _current
        if _current is self:
            _current = None
        await self.broker.stop()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self) -> None:
        async for channel, data in self.broker.listen():
            self._slice_begin()
            try:
                await self._on_remote(channel, data)
            except Exception:
                logger.exception("Bad message on broker channel %r (%d bytes)", channel, len(data))
            # A burst from other processes may arrive without the broker suspending.
            await self._yield_if_busy()

    # ------------------------------------------------------------------ slices

    def _slice_begin(self) -> None:
        """Note when fan-out work began, unless it began earlier in this turn of the loop."""
        if not self._slice_start:
            self._slice_start = time.perf_counter()
            # Runs when the event loop next gets a turn: the slice is over.
            asyncio.get_running_loop().call_soon(self._slice_over)

    def _slice_over(self) -> None:
        self._slice_start = 0.0

    async def _yield_if_busy(self) -> None:
        """Let the event loop run if fan-out has held it longer than SLICE; the work
        after it is a new slice."""
        if time.perf_counter() - self._slice_start > SLICE:
            await asyncio.sleep(0)
            self._slice_begin()

    # ------------------------------------------------------------------ members

    async def register(
        self,
        ws: WebSocket,
        groups: Iterable[str] = (),
        *,
        outbox_size: int | None = None,
        slow_consumer: SlowConsumerPolicy | None = None,
        held: bool = False,
    ) -> Outbox:
        """Make a connection reachable: by its id, and in ``groups``.

        ``held``: the connection is being accepted; messages wait until
        ``outbox.release()``, so that no message can precede the accept.
        """
        await self.start()
        outbox = self._members.get(ws)
        if outbox is None:
            outbox = Outbox(
                ws,
                outbox_size or self.outbox_size,
                slow_consumer or self.slow_consumer,
                self._report,
                held=held,
            )
            self._members[ws] = outbox
            outbox.member_id = ws.id
            self._by_id.setdefault(outbox.member_id, set()).add(outbox)
        for group in groups:
            await self._add(outbox, group)
        return outbox

    async def unregister(self, ws: WebSocket) -> None:
        """The connection is gone: leave every group, drop its outbox. O(its groups)."""
        outbox = self._members.pop(ws, None)
        if outbox is None:
            return
        outbox.close()
        ids = self._by_id.get(outbox.member_id)
        if ids is not None:
            ids.discard(outbox)
            if not ids:
                del self._by_id[outbox.member_id]
        for group in list(outbox.groups):
            await self._remove(outbox, group)

    async def join(self, ws: WebSocket, group: str, *, encoding: Encoding = "auto") -> None:
        """Add an accepted connection to ``group`` (in every process sharing the broker)."""
        outbox = self._members.get(ws)
        if outbox is None:
            from nexios.websockets.base import WebSocketState

            if ws.application_state is not WebSocketState.CONNECTED:
                raise WebSocketStateError(
                    f'Cannot join {group!r}: call "await ws.accept()" first (a connection '
                    "joins groups once it is accepted)."
                )
            outbox = await self.register(ws)
        if encoding != "auto":
            outbox.encoding = encoding
        await self._add(outbox, group)

    async def leave(self, ws: WebSocket, group: str) -> None:
        outbox = self._members.get(ws)
        if outbox is not None:
            await self._remove(outbox, group)

    async def _add(self, outbox: Outbox, group: str) -> None:
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = {}
            members[outbox.ws] = outbox
            outbox.groups.add(group)
            # The first local member: this process now wants the group's messages.
            await self.broker.subscribe(_GROUP + group)
            return
        members[outbox.ws] = outbox
        outbox.groups.add(group)

    async def _remove(self, outbox: Outbox, group: str) -> None:
        outbox.groups.discard(group)
        members = self._groups.get(group)
        if members is None:
            return
        members.pop(outbox.ws, None)
        if not members:
            # The last local member left: stop receiving the group's messages.
            del self._groups[group]
            self._sequences.forget(_GROUP + group)
            await self.broker.unsubscribe(_GROUP + group)

    def _report(self, outbox: Outbox, event: str, count: int) -> None:
        if event == "dropped":
            self.stats.dropped += count
        elif event == "closed_slow":
            self.stats.closed_slow += 1
            self._forget(outbox)
        elif event == "gone":
            self._forget(outbox)

    def _forget(self, outbox: Outbox) -> None:
        """Stop fanning out to a member the writer found unreachable (synchronously).

        Its groups are left for real, and emptied groups unsubscribed, when the
        connection's handler ends (``unregister``).
        """
        outbox.closed = True
        for group in outbox.groups:
            members = self._groups.get(group)
            if members is not None:
                members.pop(outbox.ws, None)

    # ------------------------------------------------------------------ sending

    async def _fan_out(self, group: str, kind: str, body: bytes, exclude: WebSocket | None) -> int:
        members = self._groups.get(group)
        if not members:
            return 0
        # A snapshot: members may leave meanwhile.
        return await self._deliver_sliced(
            [o for o in list(members.values()) if o.ws is not exclude], kind, body
        )

    async def _deliver_sliced(self, outboxes: list[Outbox], kind: str, body: bytes) -> int:
        """`_deliver`, in chunks for a large fan-out, letting the event loop run between
        two chunks once it has been held for longer than SLICE."""
        if len(outboxes) <= _CHUNK:
            return self._deliver(outboxes, kind, body)
        delivered = 0
        for start in range(0, len(outboxes), _CHUNK):
            if start:
                await self._yield_if_busy()
            delivered += self._deliver(outboxes[start : start + _CHUNK], kind, body)
        return delivered

    def _deliver(self, outboxes: list[Outbox], kind: str, body: bytes) -> int:
        """Send a payload to ``outboxes``, encoded and framed once per member encoding."""
        # Per encoding: the message, its frame, and the members to send to with the
        # awaitable send (servers without nexios' send_nowait), all at the end.
        forms: dict[str, tuple[Message, bytes, list[Outbox]]] = {}
        delivered = 0
        for outbox in outboxes:
            form = forms.get(outbox.encoding)
            if form is None:
                form = forms[outbox.encoding] = (*_form(kind, body, outbox.encoding), [])
            if outbox.push(form[0], form[1], form[2]):
                delivered += 1
        for message, _, together in forms.values():
            if together:
                delivered -= send_together(together, message)
        self.stats.delivered += delivered
        return delivered

    async def publish(
        self,
        group: str,
        payload: Any,
        *,
        exclude: WebSocket | None = None,
        save_history: bool = False,
    ) -> int:
        """Send ``payload`` to every member of ``group``, in every process.

        ``str`` goes as a text message, ``bytes`` as binary, anything else as JSON
        (encoded once). Returns how many local members it was queued for; the local
        members get it even when the broker is down.
        """
        await self.start()
        kind, body = _encode(payload)
        self.stats.published += 1
        if save_history:
            # Saved first: a client that has seen the message live finds it in the
            # history when it reloads, in every process.
            await self._save(group, kind, body)
        self._slice_begin()
        delivered = await self._fan_out(group, kind, body, exclude)
        if self.broker.shared:
            await self._publish_remote(_GROUP + group, {"k": kind}, body)
        # On memory:// nothing above suspends: a loop of publishes would never let the
        # event loop run.
        await self._yield_if_busy()
        return delivered

    async def send_to(self, ids: Iterable[str], payload: Any) -> int:
        """Send ``payload`` to the connections whose ``ws.id`` is in ``ids``, wherever."""
        await self.start()
        targets = list(dict.fromkeys(str(i) for i in ids))
        kind, body = _encode(payload)
        self.stats.published += 1
        self._slice_begin()
        delivered = await self._deliver_ids(targets, kind, body)
        if self.broker.shared:
            await self._publish_remote(_DIRECT, {"k": kind, "i": targets}, body)
        await self._yield_if_busy()
        return delivered

    async def _deliver_ids(self, ids: list[str], kind: str, body: bytes) -> int:
        by_id = self._by_id
        return await self._deliver_sliced(
            [o for i in ids for o in list(by_id.get(i, ()))], kind, body
        )

    async def _publish_remote(self, channel: str, header: dict[str, Any], body: bytes) -> None:
        header["o"] = self.origin
        header["s"] = self._sequences.stamp(channel)
        data = orjson.dumps(header) + b"\n" + body
        stats = self.stats
        try:
            await self.broker.publish(channel, data)
        except BrokerRefused as exc:
            self._outage(exc)
            stats.publish_failed += 1
            stats.publish_refused += 1
        except BrokerOutcomeUnknown as exc:
            self._outage(exc)
            stats.publish_unknown += 1
        except (BrokerUnavailable, OSError) as exc:
            self._outage(exc)
            stats.publish_failed += 1
        else:
            stats.published_remote += 1
            if self._publish_down:
                self._outage_over()

    def _outage(self, exc: BaseException) -> None:
        """A message did not surely reach the broker (called before it is counted)."""
        if self._publish_down:
            return
        self._publish_down = True
        stats = self.stats
        self._outage_start = (
            time.monotonic(),
            stats.publish_failed,
            stats.publish_refused,
            stats.publish_unknown,
        )
        logger.warning(
            "Broker unavailable (%s): messages reach this process's members only until it is back.",
            exc,
        )

    def _outage_over(self) -> None:
        self._publish_down = False
        began, failed, refused, unknown = self._outage_start
        stats = self.stats
        lost = stats.publish_failed - failed, stats.publish_unknown - unknown
        # A WARNING when it reports messages lost (or maybe lost): nothing is lost silently.
        logger.log(
            logging.WARNING if any(lost) else logging.INFO,
            "Broker available again after %.1f s: messages reach every process. Meanwhile "
            "%d message(s) did not reach the other processes (%d refused at once while "
            "it was known down), and %d were sent without a reply (they may or may not "
            "have reached them).",
            time.monotonic() - began,
            lost[0],
            stats.publish_refused - refused,
            lost[1],
        )

    async def _on_remote(self, channel: str, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        header = orjson.loads(head)
        origin = header.get("o")
        if origin == self.origin:
            return  # our own message, already delivered locally
        stats = self.stats
        stats.received_remote += 1
        n = header.get("s")
        if n is not None and (channel == _DIRECT or channel[len(_GROUP) :] in self._groups):
            missed = self._sequences.missed(origin, channel, n)
            if missed:
                stats.missed_remote = max(0, stats.missed_remote + missed)
                if missed > 0:
                    self._log_missed(channel, missed)
        kind = header["k"]
        if channel == _DIRECT:
            await self._deliver_ids(header["i"], kind, body)
        elif channel.startswith(_GROUP):
            await self._fan_out(channel[len(_GROUP) :], kind, body, None)

    def _log_missed(self, channel: str, missed: int) -> None:
        now = time.monotonic()
        if self._missed_logged is not None and now - self._missed_logged < _MISSED_LOG_INTERVAL:
            return
        self._missed_logged = now
        logger.warning(
            "Missed %d message(s) another process published on %r (this process was "
            "not receiving from the broker); %d missed in all (stats.missed_remote).",
            missed,
            channel,
            self.stats.missed_remote,
        )

    # ------------------------------------------------------------------ history

    async def _save(self, group: str, kind: str, body: bytes) -> None:
        try:
            await self.broker.add_history(
                _GROUP + group, kind.encode() + b"\n" + body, self.history_size
            )
        except (BrokerUnavailable, OSError) as exc:
            self.stats.history_failed += 1
            if not self._history_down:  # once per outage: it may fail for every message
                self._history_down = True
                logger.warning(
                    "Could not save history of %r: %s; messages are delivered but not "
                    "saved until the broker is back (stats.history_failed counts them).",
                    group,
                    exc,
                )
            return
        if self._history_down:
            self._history_down = False
            logger.warning(
                "History saved again; %d message(s) were not saved in all (stats.history_failed).",
                self.stats.history_failed,
            )

    async def history(self, group: str, count: int | None = None) -> list[dict[str, Any]]:
        """The group's saved messages, oldest first: ``{"id", "timestamp", "payload"}``."""
        await self.start()
        entries = await self.broker.history(_GROUP + group, count)
        saved = []
        for entry in entries:
            kind, _, body = entry.data.partition(b"\n")
            saved.append(
                {
                    "id": entry.id,
                    "timestamp": entry.timestamp,
                    "payload": _decode(kind.decode(), body),
                }
            )
        return saved

    async def clear_history(self, group: str | None = None) -> None:
        await self.start()
        await self.broker.clear_history(None if group is None else _GROUP + group)

    # ------------------------------------------------------------------ views

    def groups(self) -> dict[str, int]:
        """Each group with local members, and how many."""
        return {group: len(members) for group, members in self._groups.items()}

    def members(self, group: str) -> list[WebSocket]:
        """The local connections in ``group``."""
        return list(self._groups.get(group, ()))

    def groups_of(self, ws: WebSocket) -> set[str]:
        outbox = self._members.get(ws)
        return set(outbox.groups) if outbox is not None else set()

    def outbox_of(self, ws: WebSocket) -> Outbox | None:
        return self._members.get(ws)

    async def flush_groups(self) -> None:
        """Empty every group in this process (connections stay open)."""
        for group, members in list(self._groups.items()):
            for outbox in list(members.values()):
                await self._remove(outbox, group)

    def __repr__(self) -> str:
        return (
            f"<ChannelLayer {type(self.broker).__name__} groups={len(self._groups)} "
            f"members={len(self._members)} healthy={self.healthy}>"
        )
