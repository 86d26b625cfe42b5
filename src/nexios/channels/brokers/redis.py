"""The Redis broker: pub/sub between processes, one stream per channel for history.

Every name this broker puts in Redis starts with its *prefix*: the pub/sub channel
``f"{prefix}:{channel}"``, the history stream ``f"{prefix}:history:{channel}"``, and a
group log's hash ``f"{prefix}:log:{{{channel}}}"`` and stream
``f"{prefix}:stream:{{{channel}}}"`` (see `RedisBroker.append`). Processes that share
a Redis server and a prefix share their channels.

Two connection pools, two jobs. Commands (PUBLISH, XADD, XRANGE, ...) run at most
*max_connections* at a time (more wait their turn, without a time limit); subscriptions
live on one dedicated pub/sub connection that `listen` reads. No command is retried: a
PUBLISH that fails is lost (delivery is at most once, as `Broker` says) and surfaces
after at most *timeout* seconds, as `BrokerUnavailable` when it was not sent, or as
`BrokerOutcomeUnknown` when it was sent and no reply came (a stopped or hung Redis
may still run it when it resumes).

Once a command has found Redis unreachable, Redis is *known down*: every command
(PUBLISH included) fails at once with `BrokerRefused`, nothing sent, while a background
task probes Redis with a PING (at most one at a time, 0.05 s doubling to 0.25 s between
them). The first PING answered ends it: commands run again, ``healthy`` turns True
(unless `listen` is still reconnecting). So a handler publishing to a hung Redis waits
one *timeout* once, not once per message.

Reconnection belongs to `listen`, not to redis-py. When the pub/sub connection breaks
(server restarted, connection killed, no reply to a PING on an idle connection),
``listen`` sets ``healthy`` to False, logs one WARNING on ``nexios.channels`` for the
whole outage, then retries with exponential backoff and jitter (about 0.05 s doubling
up to 2 s). Each attempt opens a fresh pub/sub connection and subscribes every channel
of the local set (what `subscribe` and `unsubscribe` maintain) followed by a PING;
the PING's reply proves the subscriptions took effect, and only then is ``healthy``
True again, with one INFO line. Messages published during the outage are missed.
A command that finds Redis unreachable also sets ``healthy`` to False; the probe's
answered PING (or any command that succeeds) sets it back unless `listen` is still
reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

from nexios.channels.brokers.base import (
    Broker,
    BrokerOutcomeUnknown,
    BrokerRefused,
    BrokerUnavailable,
    HistoryEntry,
    Logged,
    LogRead,
)
from nexios.channels.brokers.redis_scripts import APPEND, LOG_IDLE_TTL, READ, Script
from nexios.channels.log import Bounds, PayloadKind, Position

try:
    from redis.asyncio import ConnectionPool, Redis
    from redis.asyncio.client import PubSub
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - redis is in the dev extra
    raise ImportError(
        'RedisBroker needs redis-py: install it with pip install "nexios[redis]"'
    ) from exc

__all__ = ["RedisBroker"]

logger = logging.getLogger("nexios.channels")

T = TypeVar("T")

#: The errors that mean "Redis cannot be reached" (OSError covers socket errors and
#: the builtin TimeoutError).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

_BACKOFF_START = 0.05
_BACKOFF_CAP = 2.0
# Between two PINGs of the background probe while commands are known down.
_PROBE_CAP = 0.25

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


class _Stopped(Exception):
    """`stop` interrupted what `listen` was waiting for."""


def _backoff(attempt: int, cap: float = _BACKOFF_CAP) -> float:
    """Seconds to wait before reconnection attempt *attempt* (1, 2, ...), with jitter."""
    delay = min(cap, _BACKOFF_START * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


class RedisBroker(Broker):
    """A `Broker` on a Redis server, shared by every process that uses the same prefix.

    ``RedisBroker(url, prefix=..., history_ttl=...)`` connects nowhere until
    ``await broker.start()``; the channel layer calls ``start``, iterates ``listen`` in
    one task for as long as it runs, and calls ``stop`` at shutdown.

    * *url*: a redis-py URL (``redis://[[user]:password@]host:port/db``,
      ``rediss://`` for TLS, ``unix:///path.sock``).
    * *prefix*: the namespace of every channel and key this broker touches.
    * *history_ttl*: seconds a channel's history lives after its last `add_history`
      (None: until `clear_history`).
    * *timeout*: seconds to connect and to wait for a reply before a command fails
      with `BrokerUnavailable`.
    * *max_connections*: how many commands may run at once (each on its connection);
      more concurrent commands wait for their turn.
    * *health_check_interval*: seconds of silence on the pub/sub connection after which
      `listen` sends a PING; no reply within as long again counts as an outage.
    """

    shared = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "nexios",
        history_ttl: float | None = None,
        timeout: float = 1.0,
        max_connections: int = 16,
        health_check_interval: float = 15.0,
    ) -> None:
        if not prefix:
            raise ValueError("RedisBroker needs a non-empty prefix, such as prefix='nexios'.")
        if history_ttl is not None and history_ttl <= 0:
            raise ValueError("history_ttl must be a positive number of seconds, or None.")
        if timeout <= 0 or health_check_interval <= 0:
            raise ValueError("timeout and health_check_interval must be positive seconds.")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1.")
        self.prefix = prefix
        self.history_ttl = history_ttl
        self.healthy = True
        self._timeout = timeout
        self._health_check_interval = health_check_interval
        # Client names show up in CLIENT LIST; Redis refuses spaces in them.
        name = re.sub(r"\s", "_", prefix)
        # No retries: redis-py would reconnect behind our back (listen owns that) and
        # could send a PUBLISH twice (delivery is at most once).
        options: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
            "retry": Retry(NoBackoff(), 0, supported_errors=()),
        }
        # The semaphore bounds the connections: a pool that bounds them itself fails a
        # command that waited *timeout* for a turn, as if Redis were unreachable.
        self._client = Redis.from_pool(
            ConnectionPool.from_url(url, client_name=f"{name}:commands", **options)
        )
        self._slots = asyncio.Semaphore(max_connections)
        # Known down: a command found Redis unreachable and no PING has been answered
        # since; commands fail at once and `_probe` runs.
        self._commands_down = False
        # After an outage the pooled command connections are dead sockets that redis-py
        # 8 does not always notice: the next command drops them first.
        self._stale_commands = False
        self._probe_task: asyncio.Task[None] | None = None
        self._last_error = ""
        # One connection at a time, but a plain pool: a reconnection never waits for
        # the previous connection to be given back.
        self._sub_client = Redis.from_pool(
            ConnectionPool.from_url(url, client_name=f"{name}:pubsub", **options)
        )
        kwargs = self._client.connection_pool.connection_kwargs
        if "path" in kwargs:
            self._where = f"{kwargs['path']} (db {kwargs.get('db', 0)})"
        else:  # never the password
            self._where = f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"
        # The subscribed channels: the Redis name (bytes, as messages carry it) -> ours.
        self._channels: dict[bytes, str] = {}
        self._pubsub: PubSub | None = None
        # subscribe() waits for Redis to confirm, when a listen loop reads the replies.
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        self._listen_task: asyncio.Task[Any] | None = None
        self._scope: asyncio.Timeout | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._outage = False
        self._stopping = False

    def __repr__(self) -> str:
        return f"RedisBroker({self._where!r}, prefix={self.prefix!r})"

    # Lifecycle.

    async def start(self) -> None:
        """Check that Redis answers.

        An unreachable Redis does not fail ``start``: ``healthy`` is then False, the
        outage is logged, and `listen` connects once Redis is back.
        """
        try:
            await self._command(self._client.ping)
        except BrokerUnavailable as exc:
            self._mark_outage(exc.__cause__ or exc)

    async def stop(self) -> None:
        """End `listen` (its ``async for`` finishes) and close every connection.

        Commands after ``stop`` raise `BrokerUnavailable`. Calling ``stop`` twice is
        harmless; a stopped broker cannot be started again (create a new one).
        """
        if self._stopping:
            return
        self._stopping = True
        probe, self._probe_task = self._probe_task, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        if self._scope is not None:  # listen is waiting on Redis: wake it up now
            self._scope.reschedule(asyncio.get_running_loop().time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await self._idle.wait()
        self._release_confirmations()
        await self._drop_pubsub()
        await self._sub_client.aclose()
        await self._client.aclose()

    # Pub/sub.

    async def publish(self, channel: str, data: bytes) -> None:
        """Send *data* to every process subscribed to *channel*, this one included.

        Raises, never retrying: `BrokerRefused` at once while Redis is known down (not
        sent); `BrokerUnavailable` (within about *timeout* seconds) when it could not be
        sent; `BrokerOutcomeUnknown` when it was sent and no reply came within
        *timeout*: Redis may still deliver it (a stopped server runs it on resuming).
        """
        await self._roundtrip("PUBLISH", ("PUBLISH", self._channel_name(channel), data))

    async def subscribe(self, channel: str) -> None:
        """Deliver *channel*'s messages through `listen`, across reconnections too.

        With a `listen` loop running in another task and Redis reachable, this returns
        once Redis has confirmed the subscription (or after *timeout* seconds): a message
        published after that reaches this process. During an outage it returns at once
        and the subscription is made when `listen` reconnects. Without a running
        `listen`, nothing confirms it: start iterating `listen` before the first
        ``subscribe``. Never raises for an unreachable Redis.
        """
        self._check_running()
        name = self._channel_name(channel).encode()
        if name in self._channels:
            return
        self._channels[name] = channel
        pubsub = self._pubsub  # None: listen subscribes every channel when it connects
        confirmed: asyncio.Future[None] | None = None
        task = self._listen_task
        if task is not None and task is not asyncio.current_task() and not self._outage:
            # listen reads the confirmation (of our SUBSCRIBE, or of the one its
            # connection sends for every channel if it is connecting right now).
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmations.setdefault(name, []).append(confirmed)
        try:
            if pubsub is not None:
                await pubsub.subscribe(name)
            if confirmed is not None:
                async with asyncio.timeout(self._timeout):
                    await confirmed
        except TimeoutError:
            logger.debug("Redis did not confirm the subscription to %r in time", channel)
        except (RedisError, OSError) as exc:
            # The connection is broken: listen's read fails too, and its reconnection
            # subscribes this channel with the others.
            logger.debug("SUBSCRIBE %r failed, listen will retry: %s", channel, exc)
        finally:
            if confirmed is not None:
                waiting = self._confirmations.get(name, [])
                with contextlib.suppress(ValueError):
                    waiting.remove(confirmed)
                if not waiting:
                    self._confirmations.pop(name, None)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering *channel*'s messages: `listen` yields none of them from now on."""
        name = self._channel_name(channel).encode()
        if self._channels.pop(name, None) is None:
            return
        pubsub = self._pubsub
        if pubsub is None or self._stopping:
            return
        try:
            await pubsub.unsubscribe(name)
        except (RedisError, OSError) as exc:  # listen reconnects without this channel
            logger.debug("UNSUBSCRIBE %r failed: %s", channel, exc)

    async def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``(channel, data)`` for each message of a subscribed channel until `stop`.

        Iterate it from one task, for the life of the broker: it owns the pub/sub
        connection and its reconnection (see the module docstring), and never raises
        for an unreachable Redis. Only one ``listen`` may run at a time.
        """
        if self._listen_task is not None:
            raise RuntimeError("RedisBroker.listen() is already running: iterate it once.")
        self._listen_task = asyncio.current_task()
        attempt = 0  # failed connection attempts in a row
        # After a connection, the reply to its PING says that every SUBSCRIBE sent
        # before took effect: only then is the broker healthy again.
        connecting = False
        # A PING sent on a silent connection: no reply in time means a dead connection.
        awaiting_pong = False
        try:
            while not self._stopping:
                pubsub = self._pubsub
                if pubsub is None:
                    if attempt:
                        await self._interruptible(asyncio.sleep(_backoff(attempt)))
                    attempt += 1
                    try:
                        pubsub = await self._interruptible(self._connect())
                        await self._interruptible(pubsub.ping())
                    except (RedisError, OSError) as exc:
                        self._mark_outage(exc)
                        await self._drop_pubsub()
                        continue
                    connecting, awaiting_pong = True, True
                try:
                    message = await self._interruptible(
                        pubsub.get_message(timeout=self._health_check_interval)
                    )
                    if message is None:  # silence: is the connection still alive?
                        if awaiting_pong:
                            raise RedisConnectionError(
                                f"no reply to PING in {self._health_check_interval} s"
                            )
                        awaiting_pong = True
                        await self._interruptible(pubsub.ping())
                        continue
                except (RedisError, OSError) as exc:
                    self._mark_outage(exc)
                    await self._drop_pubsub()
                    attempt = max(attempt, 1)  # reset only once a connection proved itself
                    continue
                awaiting_pong = False
                kind = message["type"]
                if kind == "message":
                    channel = self._channels.get(message["channel"])
                    if channel is not None:  # else: unsubscribed since it was sent
                        yield channel, message["data"]
                elif kind == "subscribe":
                    for confirmed in self._confirmations.pop(message["channel"], ()):
                        if not confirmed.done():
                            confirmed.set_result(None)
                elif kind == "pong" and connecting:
                    connecting, attempt = False, 0
                    self._mark_recovered()
        except _Stopped:
            return
        finally:
            self._listen_task = None

    # History.

    async def add_history(self, channel: str, data: bytes, maxlen: int) -> HistoryEntry:
        """Append *data* to *channel*'s stream, trimmed to its last *maxlen* entries.

        Raises `BrokerUnavailable` when Redis cannot be reached.
        """
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, not {maxlen}.")
        key = self._history_key(channel)
        ttl = self.history_ttl

        async def add() -> bytes | str:
            if ttl is None:
                return await self._client.xadd(
                    key, {b"data": data}, maxlen=maxlen, approximate=False
                )
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(key, {b"data": data}, maxlen=maxlen, approximate=False)
                pipe.pexpire(key, round(ttl * 1000))
                entry_id: bytes = (await pipe.execute())[0]
                return entry_id

        return _entry(await self._command(add), data)

    async def history(self, channel: str, count: int | None = None) -> list[HistoryEntry]:
        """*channel*'s saved entries, oldest first: all of them, or the last *count*.

        Raises `BrokerUnavailable` when Redis cannot be reached.
        """
        self._check_running()
        if count is not None and count <= 0:
            return []
        key = self._history_key(channel)
        if count is None:
            rows = await self._command(lambda: self._client.xrange(key))
        else:
            rows = await self._command(lambda: self._client.xrevrange(key, count=count))
        # Without decode_responses, ids, field names and values are bytes.
        typed = cast("list[tuple[bytes, dict[bytes, bytes]]]", rows or [])
        entries = [_entry(entry_id, fields[b"data"]) for entry_id, fields in typed]
        if count is not None:
            entries.reverse()
        return entries

    async def clear_history(self, channel: str | None = None) -> None:
        """Delete *channel*'s history and log, or with None every channel's under this
        prefix: the next append starts a new epoch.

        Raises `BrokerUnavailable` when Redis cannot be reached.
        """
        if channel is not None:
            history = self._history_key(channel)
            log = (self._log_key(channel), self._stream_key(channel), self._sizes_key(channel))

            async def delete_one() -> None:
                await self._client.delete(history)
                await self._client.delete(*log)  # one slot: the channel is their hash tag

            await self._command(delete_one)
            return
        prefix = _GLOB_SPECIAL.sub(r"\\\1", self.prefix)

        async def delete_all() -> None:
            for kind in ("history", "log", "stream", "sizes"):
                batch: list[bytes] = []
                async for key in self._client.scan_iter(match=f"{prefix}:{kind}:*", count=500):
                    batch.append(key)
                    if len(batch) == 500:
                        await self._client.delete(*batch)
                        batch.clear()
                if batch:
                    await self._client.delete(*batch)

        await self._command(delete_all)

    # Logs.

    logs = True

    async def append(
        self, channel: str, kind: PayloadKind, body: bytes, msg_id: str, bounds: Bounds
    ) -> Position:
        """Append a message to *channel*'s log and announce it, in one Lua script.

        The log lives in two keys, in one Redis Cluster slot (the hash tag is the
        channel): the hash ``f"{prefix}:log:{{{channel}}}"`` (``epoch``, ``top``,
        ``bytes``, ``t`` the last append's time, ``age`` the last *max_age*) and the
        stream ``f"{prefix}:stream:{{{channel}}}"``, one entry per offset with id
        ``"<offset>-0"``. The script creates the log with a new epoch if it is missing
        (never written, expired, flushed, or its stream lost), adds the entry at
        ``top + 1`` stamped with Redis's clock (never earlier than the previous entry),
        drops the oldest entries the *bounds* no longer allow (the newest always kept),
        gives both keys a TTL of ``max(max_age, 1 hour)`` when *max_age* is set (none
        otherwise), and PUBLISHes `announcement` on the channel's pub/sub name, so
        subscribers get announcements in offset order. Needs Redis 6.2 (XTRIM MINID).

        Raises like `publish`, never retrying: `BrokerRefused` (known down, not sent),
        `BrokerUnavailable` (not sent, or refused by Redis with an error: not appended),
        `BrokerOutcomeUnknown` (sent, no reply: it may have been appended and
        announced, now or when Redis resumes).
        """
        if "\n" in msg_id:
            raise ValueError(f"message id {msg_id!r} has a newline: announcements split there")
        args = (
            secrets.token_hex(8),
            kind,
            body,
            msg_id,
            _optional(bounds.max_count),
            _optional(bounds.max_bytes),
            "" if bounds.max_age is None else repr(bounds.max_age * 1000),
            "" if bounds.max_age is None else str(round(max(bounds.max_age, LOG_IDLE_TTL) * 1000)),
            self._channel_name(channel),
        )
        reply = await self._script("append", APPEND, channel, args)
        epoch, offset = cast("list[Any]", reply)
        return Position(epoch.decode(), int(offset))

    async def read(self, channel: str, after: int, limit: int | None = None) -> LogRead:
        """*channel*'s log after offset *after* (at most *limit* entries), in one Lua
        script, so the epoch, top, first and entries agree.

        Drops the entries older than the *max_age* of the last `append` first (an
        expired entry is never returned). A missing log is created empty with a new
        epoch, which lives an hour unless something is appended. Keys: see `append`.
        Raises `BrokerUnavailable` (or `BrokerRefused`, `BrokerOutcomeUnknown`).
        """
        args = (
            secrets.token_hex(8),
            str(int(after)),
            _optional(limit),
            str(round(LOG_IDLE_TTL * 1000)),
        )
        reply = await self._script("read", READ, channel, args)
        epoch, top, first, rows = cast("list[Any]", reply)
        entries = []
        for entry_id, flat in cast("list[tuple[bytes, list[bytes]]]", rows):
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            entries.append(
                Logged(
                    int(entry_id.partition(b"-")[0]),
                    cast(PayloadKind, fields[b"k"].decode()),
                    fields[b"b"],
                    fields[b"i"].decode(),
                )
            )
        return LogRead(epoch.decode(), int(top), int(first), entries)

    async def _script(self, what: str, script: Script, channel: str, args: tuple[Any, ...]) -> Any:
        """Run a log script on *channel*'s keys: EVALSHA, then EVAL if Redis lacks it."""
        keys = (self._log_key(channel), self._stream_key(channel), self._sizes_key(channel))
        try:
            return await self._roundtrip(
                f"the log {what} script",
                ("EVALSHA", script.sha, len(keys), *keys, *args),
                ("EVAL", script.text, len(keys), *keys, *args),
            )
        except ResponseError as exc:
            # An error reply (WRONGTYPE, OOM, BUSY, ...): the scripts fail before they
            # append anything (OOM is checked at a script's first write, and the only
            # write before XADD creates an empty log).
            raise BrokerUnavailable(
                f"Redis at {self._where} refused the log {what} script: {exc}"
            ) from exc

    # Internals.

    def _channel_name(self, channel: str) -> str:
        return f"{self.prefix}:{channel}"

    def _history_key(self, channel: str) -> str:
        return f"{self.prefix}:history:{channel}"

    def _log_key(self, channel: str) -> str:
        return f"{self.prefix}:log:{{{channel}}}"

    def _stream_key(self, channel: str) -> str:
        return f"{self.prefix}:stream:{{{channel}}}"

    def _sizes_key(self, channel: str) -> str:
        return f"{self.prefix}:sizes:{{{channel}}}"

    def _check_running(self) -> None:
        if self._stopping:
            raise BrokerUnavailable(f"{self!r} is stopped.")

    async def _command(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run *operation* (Redis commands on `_client`), or raise `BrokerUnavailable`
        (`BrokerRefused` at once while Redis is known down)."""
        self._check_running()
        if self._commands_down:  # fail fast, without waiting a turn
            raise self._refused()
        async with self._slots:
            if self._commands_down:
                raise self._refused()
            try:
                if self._stale_commands:
                    self._stale_commands = False
                    await self._client.connection_pool.disconnect(inuse_connections=False)
                result = await operation()
            except _UNREACHABLE as exc:
                self._went_down(exc)
                raise BrokerUnavailable(
                    f"Redis at {self._where} unavailable: {self._last_error}"
                ) from exc
        self._answered()
        return result

    async def _roundtrip(
        self, what: str, command: tuple[Any, ...], fallback: tuple[Any, ...] | None = None
    ) -> Any:
        """Send *command* on a connection of our own, then read its reply, through
        `_command`; if the reply is NOSCRIPT and there is a *fallback*, send that instead.

        What a failure means depends on when it came, so this raises `BrokerUnavailable`
        (or `BrokerRefused`) when nothing was sent, `BrokerOutcomeUnknown` (naming
        *what*) when it was sent and no reply came. An error reply is raised as redis-py
        raises it (the connection stays usable).
        """
        sent = False

        async def exchange() -> Any:
            nonlocal sent
            pool = self._client.connection_pool
            connection = await cast(Any, pool).get_connection()  # untyped in redis-py
            try:
                await connection.send_command(*command)
                sent = True
                try:
                    return await connection.read_response()
                except NoScriptError:
                    if fallback is None:
                        raise
                sent = False  # the script did not run
                await connection.send_command(*fallback)
                sent = True
                return await connection.read_response()
            except ResponseError:
                raise  # a reply: the connection is in step
            except BaseException:
                # A reply may still come: the connection cannot be used again.
                with contextlib.suppress(RedisError, OSError):
                    await connection.disconnect(nowait=True)
                raise
            finally:
                await pool.release(connection)

        try:
            return await self._command(exchange)
        except BrokerUnavailable as exc:
            if not sent:
                raise
            raise BrokerOutcomeUnknown(
                f"Redis at {self._where} did not answer {what} (it may still run it): "
                f"{self._last_error}"
            ) from exc.__cause__

    def _refused(self) -> BrokerRefused:
        return BrokerRefused(
            f"Redis at {self._where} unavailable (known down, not tried): {self._last_error}"
        )

    def _went_down(self, exc: BaseException) -> None:
        """A command found Redis unreachable: fail the next ones at once, and probe."""
        self._commands_down, self.healthy = True, False
        self._last_error = _describe(exc)
        if (self._probe_task is None or self._probe_task.done()) and not self._stopping:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    def _answered(self) -> None:
        """Redis answered a command."""
        self._commands_down = False
        if not self._outage:
            self.healthy = True
        elif self._listen_task is None:  # else listen is reconnecting, and says when done
            self._mark_recovered()

    async def _probe(self) -> None:
        """PING Redis, one at a time with backoff, until it answers (commands are known
        down meanwhile)."""
        attempt = 0
        while self._commands_down and not self._stopping:
            attempt += 1
            await asyncio.sleep(_backoff(attempt, _PROBE_CAP))
            if not self._commands_down or self._stopping:
                return
            try:
                async with self._slots:
                    if self._stale_commands:
                        self._stale_commands = False
                        await self._client.connection_pool.disconnect(inuse_connections=False)
                    await self._client.ping()
            except _UNREACHABLE as exc:
                self._last_error = _describe(exc)
                continue
            except RedisError as exc:  # it answered, if with an error: it is up
                logger.debug("PING to %s answered with an error: %s", self._where, exc)
            self._answered()

    async def _interruptible(self, awaitable: Awaitable[T]) -> T:
        """Await *awaitable* in `listen`; raise `_Stopped` if `stop` interrupts it."""
        if self._stopping:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise _Stopped
        scope = asyncio.timeout(None)
        self._scope = scope
        self._idle.clear()
        try:
            async with scope:
                return await awaitable
        except Exception:
            # Whatever stop() interrupted or closed (a read cut short, a closed
            # connection), listen just ends.
            if self._stopping:
                raise _Stopped from None
            raise
        finally:
            self._scope = None
            self._idle.set()

    async def _connect(self) -> PubSub:
        """Open a pub/sub connection and subscribe every channel of the local set."""
        pubsub = self._sub_client.pubsub()
        try:
            await cast(Any, pubsub).connect()  # untyped in redis-py
        except BaseException:
            await _close(pubsub)
            raise
        # From here on, subscribe() sends its own SUBSCRIBE on this connection; every
        # channel added before is in this snapshot.
        self._pubsub = pubsub
        names = list(self._channels)
        if names:
            await pubsub.subscribe(*names)
        return pubsub

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _close(pubsub)

    def _mark_outage(self, exc: BaseException) -> None:
        self.healthy = False
        self._stale_commands = True
        self._release_confirmations()
        if not self._outage:
            self._outage = True
            logger.warning(
                "Redis at %s unavailable: %s; local delivery continues, reconnecting",
                self._where,
                _describe(exc),
            )

    def _mark_recovered(self) -> None:
        self.healthy = True
        self._commands_down = False  # Redis answered: commands may all try again
        if self._outage:
            self._outage = False
            logger.info(
                "Redis at %s reachable again; resubscribed to %d channel(s)",
                self._where,
                len(self._channels),
            )
            if self.on_resubscribed is not None:
                self.on_resubscribed()

    def _release_confirmations(self) -> None:
        """Let every subscribe() waiting for a confirmation return now."""
        for waiting in self._confirmations.values():
            for confirmed in waiting:
                if not confirmed.done():
                    confirmed.set_result(None)
        self._confirmations.clear()


def _optional(number: int | None) -> str:
    """A bound or limit as a script argument: "" for None."""
    return "" if number is None else str(number)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _entry(entry_id: bytes | str, data: bytes) -> HistoryEntry:
    """A HistoryEntry from a stream id (``"<ms>-<seq>"``) and its data."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return HistoryEntry(id=text, timestamp=int(text.partition("-")[0]) / 1000, data=data)


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(RedisError, OSError):
        await cast(Any, pubsub).aclose()  # untyped in redis-py
