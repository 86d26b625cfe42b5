"""A connection's outbox: the bounded queue between fan-out and the socket.

Fan-out never blocks on a member: `Outbox.push` sends at once when nothing waits (and the
socket takes it), else queues; a writer task, which runs only while messages wait, sends
them in order. A client that reads slowly fills its own outbox and nobody else's. When
an outbox is full, its policy decides:

- ``"drop_oldest"`` (default): drop the oldest waiting message, keep the new one: a slow
  reader sees the latest state;
- ``"drop_newest"``: drop the new message, keep what waits;
- ``"close"``: close the connection with 1013 (try again later) and drop what waits.

Every drop and close is counted (on the outbox and in the layer's stats) and logged once
per connection.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Literal, get_args

from nexios._tasks import spawn
from nexios.types import Message
from nexios.websockets.base import WebSocketState

if TYPE_CHECKING:
    from nexios.websockets.base import WebSocket

__all__ = ["POLICIES", "Outbox", "SlowConsumerPolicy", "send_together"]

logger = logging.getLogger("nexios.channels")

SlowConsumerPolicy = Literal["drop_oldest", "drop_newest", "close"]
POLICIES: tuple[str, ...] = get_args(SlowConsumerPolicy)

SLOW_CONSUMER_CLOSE = (1013, "Slow consumer: too many messages waiting")

_CONNECTED = WebSocketState.CONNECTED


def send_together(outboxes: list[Outbox], message: Message) -> int:
    """Send ``message`` to each outbox's connection (idle, accepted) with its awaitable
    ``send``: one after the other in one coroutine, as a raw ASGI loop does, stepped
    here. A send that must wait (a full socket) is left to its outbox, which resumes it
    in a writer task, and the members after it go on at once. Returns how many sends
    failed here (those connections are gone)."""
    failed = 0
    start = 0
    while start < len(outboxes):
        batch = _Together(outboxes, start, message)
        run = batch.run()
        try:
            waits_for = run.send(None)
        except StopIteration:
            return failed + batch.failed
        # Suspended in the send to outboxes[batch.index]: once it is done the batch
        # stops, and the members after it are served by a new batch now.
        failed += batch.failed
        batch.detached = True
        outboxes[batch.index]._wait(run, waits_for)
        start = batch.index + 1
    return failed


class _Together:
    """One run of `send_together`: a coroutine awaiting each member's send in turn (the
    value of a finished send passes back without an exception, unlike stepping each
    send by hand, which costs a StopIteration per member)."""

    __slots__ = ("detached", "failed", "index", "message", "outboxes", "start")

    def __init__(self, outboxes: list[Outbox], start: int, message: Message) -> None:
        self.outboxes = outboxes
        self.start = start
        self.message = message
        self.index = start
        self.failed = 0
        self.detached = False

    async def run(self) -> None:
        outboxes, message = self.outboxes, self.message
        for index in range(self.start, len(outboxes)):
            self.index = index
            outbox = outboxes[index]
            try:
                await outbox.ws._send(message)
            except Exception:
                # The peer went away (uvicorn: ClientDisconnected) or the app closed it.
                outbox._gone()
                self.failed += 1
            if self.detached:
                return


@types.coroutine
def _go_on(coro: Coroutine[Any, Any, None]) -> Generator[Any, None, None]:
    """Await a coroutine that was started by hand and is suspended (``await coro`` is
    refused then: "coroutine is being awaited already"): pass what it waits for up to
    the task, and the task's outcome (a result, a cancellation) back down to it."""
    thrown: BaseException | None = None
    while True:
        try:
            waits_for = coro.send(None) if thrown is None else coro.throw(thrown)
        except StopIteration:
            return
        thrown = None
        try:
            yield waits_for
        except BaseException as exc:  # the task was cancelled: so is the send
            thrown = exc


class Outbox:
    """The messages waiting to be sent to one connection, and the task sending them."""

    __slots__ = (
        "_pending",
        "_report",
        "_task",
        "closed",
        "dropped",
        "encoding",
        "groups",
        "held",
        "maxsize",
        "member_id",
        "policy",
        "queue",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        maxsize: int,
        policy: SlowConsumerPolicy,
        report: Callable[[Outbox, str, int], None],
        encoding: str = "auto",
        held: bool = False,
    ) -> None:
        if maxsize < 1:
            raise ValueError("outbox_size must be at least 1.")
        if policy not in POLICIES:
            raise ValueError(f"Unknown slow-consumer policy {policy!r}: use one of {POLICIES}.")
        self.ws = ws
        self.maxsize = maxsize
        self.policy = policy
        self.encoding = encoding
        self.queue: deque[Message] = deque()
        self.groups: set[str] = set()
        self.member_id = ""
        # Held: messages queue up but nothing is sent until release() (the handshake
        # is being answered).
        self.held = held
        self.dropped = 0
        self.closed = False
        # Called with "dropped", "closed_slow" or "gone" (the connection cannot be sent to).
        self._report = report
        # The writer task, while one runs; or a send that waits to be resumed (`_wait`).
        self._task: asyncio.Task[None] | None = None
        self._pending: Coroutine[Any, Any, None] | None = None

    def push(
        self,
        message: Message,
        frame: bytes | None = None,
        together: list[Outbox] | None = None,
    ) -> bool:
        """Send or queue ``message``; never blocks. False if it was dropped (or the outbox
        closed, or the connection found gone).

        ``frame``: the message already framed (see ``nexios._frames``), for a server that
        can write it as it is. ``together``: where a fan-out collects the members to send
        to with the awaitable ``send``, to do it in one go (`send_together`); without
        it, push sends at once itself.
        """
        if self.closed:
            return False
        queue = self.queue
        if not queue and self._task is None and self._pending is None and not self.held:
            # Nothing waits and no send is under way: send now, with no task and no
            # wake-up. nexios' server writes at once if the socket takes it (send_nowait);
            # on another server the awaitable send is started here, and it rarely waits.
            ws = self.ws
            if ws.application_state is _CONNECTED:
                send_nowait = ws._send_nowait
                if send_nowait is None:
                    if together is not None:
                        together.append(self)
                        return True
                    return not send_together([self], message)
                if send_nowait(message, frame):
                    return True
        if len(queue) >= self.maxsize:
            return self._full(message)
        queue.append(message)
        if self._task is None and self._pending is None and not self.held:
            self._task = asyncio.get_running_loop().create_task(self._write())
        return True

    def _wait(self, send: Coroutine[Any, Any, None], waits_for: Any) -> None:
        """``send``, started by `send_together`, waits for ``waits_for`` (room in the
        socket, say): resume it in a writer task once that is done; what queues behind
        it meanwhile follows it, in order."""
        self._pending = send
        if hasattr(waits_for, "add_done_callback"):
            waits_for.add_done_callback(self._resume)
        else:  # a bare yield (asyncio.sleep(0)): the next loop iteration
            asyncio.get_running_loop().call_soon(self._resume, None)

    def _resume(self, _: object) -> None:
        send, self._pending = self._pending, None
        if send is not None:  # else the outbox was closed meanwhile
            self._task = asyncio.get_running_loop().create_task(self._write(_go_on(send)))

    def release(self) -> None:
        """Start sending (the connection is accepted)."""
        self.held = False
        if self.queue and self._task is None and not self.closed:
            self._task = asyncio.get_running_loop().create_task(self._write())

    def _full(self, message: Message) -> bool:
        if self.policy == "close":
            # The new message and every waiting one are lost with the connection.
            lost = len(self.queue) + 1
            self.dropped += lost
            self._report(self, "dropped", lost)
            self._close_slow()
            return False
        self.dropped += 1
        self._report(self, "dropped", 1)
        if self.dropped == 1:
            logger.warning(
                "WebSocket %s (%s) reads too slowly: its outbox of %d is full; "
                "dropping the %s messages from now on (policy %r).",
                self.ws.id,
                self.ws.scope.get("path"),
                self.maxsize,
                "oldest" if self.policy == "drop_oldest" else "newest",
                self.policy,
            )
        if self.policy == "drop_oldest":
            self.queue.popleft()
            self.queue.append(message)
            return True
        return False

    def _close_slow(self) -> None:
        logger.warning(
            "WebSocket %s (%s) reads too slowly: its outbox of %d is full; closing it "
            "with 1013 (policy 'close').",
            self.ws.id,
            self.ws.scope.get("path"),
            self.maxsize,
        )
        self._report(self, "closed_slow", 0)
        self.close()
        spawn(self._send_close())

    async def _send_close(self) -> None:
        try:
            await self.ws.close(*SLOW_CONSUMER_CLOSE)
        except Exception:  # the peer is gone too; keepalive will reap the socket
            logger.debug("Could not close slow WebSocket %s", self.ws.id, exc_info=True)

    async def _write(self, started: Awaitable[None] | None = None) -> None:
        """Finish a send `send_together` began, then send what waits, in order; end when
        nothing does (the next push starts again)."""
        queue = self.queue
        send = self.ws._send
        ws = self.ws
        try:
            if started is not None:
                await started
            while queue:
                if ws.application_state is not _CONNECTED:
                    self._gone()
                    return
                await send(queue.popleft())
        except asyncio.CancelledError:
            raise
        except Exception:
            # The peer went away (uvicorn: ClientDisconnected) or the app closed it.
            self._gone()
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _gone(self) -> None:
        self.closed = True
        self.queue.clear()
        self._report(self, "gone", 0)

    def close(self) -> None:
        """Stop sending: drop what waits and end the writer task."""
        self.closed = True
        self.queue.clear()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.close()
        task, self._task = self._task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
