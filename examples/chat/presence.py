"""Who is in each room, in one process (memory) or shared by every process (Redis).

``app.channels.members(room)`` only knows this process's connections, so the chat keeps
presence in a place every process sees: a dict for the memory broker (one process), a
Redis hash per room when the broker is Redis. Either way a room maps each *name* to its
owner (``client``: the browser tab, kept across reloads; ``conn``: the connection), and
has a *version* that grows with every change: clients keep the roster with the highest
version, so presence notices that arrive out of order cannot undo a newer list.

* `claim` takes a name for a connection, unless another tab holds it (the same tab may
  take it back: a page that reloads gets in before its old connection is gone).
* `release` gives it back, only if this very connection still holds it.
* `roster` lists the names, and the version.

On Redis each process also keeps ``alive:<process>`` set with a short expiry, renewed by
`heartbeat`; a name whose process stopped renewing it (killed, crashed) is dropped by the
next `roster` of its room (reported in ``Roster.gone``), and can be claimed by anybody.
When Redis loses a process's names (restarted empty; or the process stalled for longer
than ALIVE_FOR), its next `heartbeat` says so, and the app claims them again.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

ALIVE_FOR = 15  # seconds a process's names outlive its last heartbeat (Redis)
HEARTBEAT = 5.0  # seconds between heartbeats


class PresenceUnavailable(ConnectionError):
    """The shared presence store cannot be reached."""


@dataclass(frozen=True)
class Roster:
    version: int
    names: list[str]
    gone: list[str] = field(default_factory=list)  # dropped: their process is gone


class Presence:
    """What the app needs of a presence store."""

    async def start(self) -> None:
        """Connect (the app calls it at startup)."""

    async def stop(self) -> None:
        """Disconnect (the app calls it at shutdown, after the connections closed)."""

    async def heartbeat(self) -> bool:
        """Say this process is alive; the app calls it every HEARTBEAT seconds.

        False: the store had lost this process (Redis restarted empty, or this process
        stalled for longer than ALIVE_FOR and its names were dropped); the app must claim
        its people's names again.
        """
        return True

    async def claim(self, room: str, name: str, client: str, conn: str) -> int | None:
        """Take *name* in *room*: the new version, or None if another tab holds it."""
        raise NotImplementedError

    async def release(self, room: str, name: str, client: str, conn: str) -> int | None:
        """Give *name* back: the new version, or None if *conn* did not hold it."""
        raise NotImplementedError

    async def roster(self, room: str) -> Roster:
        """The names in *room*, sorted, and the version of that list."""
        raise NotImplementedError


def presence_for(broker_url: str) -> Presence:
    """Redis presence for a Redis broker, memory presence for anything else."""
    if broker_url.partition("://")[0] in ("redis", "rediss", "unix"):
        return RedisPresence(broker_url)
    return MemoryPresence()


class MemoryPresence(Presence):
    """Presence for one process. A room is forgotten when its last person leaves."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, tuple[str, str]]] = {}
        self._versions: dict[str, int] = {}

    async def claim(self, room: str, name: str, client: str, conn: str) -> int | None:
        owners = self._rooms.setdefault(room, {})
        held = owners.get(name)
        if held is not None and held[0] != client:
            return None
        owners[name] = (client, conn)
        return self._bump(room)

    async def release(self, room: str, name: str, client: str, conn: str) -> int | None:
        owners = self._rooms.get(room)
        if owners is None or owners.get(name) != (client, conn):
            return None
        del owners[name]
        version = self._bump(room)
        if not owners:
            del self._rooms[room], self._versions[room]
        return version

    async def roster(self, room: str) -> Roster:
        return Roster(self._versions.get(room, 0), sorted(self._rooms.get(room, ())))

    def _bump(self, room: str) -> int:
        version = self._versions[room] = self._versions.get(room, 0) + 1
        return version


# The scripts run atomically in Redis. An owner is "<process>|<client>|<conn>". A version
# is the time in ms (ARGV[1]), or one more than the last if that is later: it keeps
# growing even if Redis loses the room (restarted empty), so pages never ignore the list.
_BUMP = """
local function bump(key, now)
  local version = tonumber(redis.call('GET', key) or '0') + 1
  if version < now then version = now end
  redis.call('SET', key, version)
  return version
end
"""

_CLAIM = (
    _BUMP
    + """
local held = redis.call('HGET', KEYS[1], ARGV[2])
if held then
  local process, client = string.match(held, '^([^|]*)|([^|]*)|')
  if client ~= ARGV[4] and redis.call('EXISTS', ARGV[5] .. process) == 1 then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return bump(KEYS[2], tonumber(ARGV[1]))
"""
)

_RELEASE = (
    _BUMP
    + """
if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
local version = bump(KEYS[2], tonumber(ARGV[1]))
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return version
"""
)


class RedisPresence(Presence):
    """Presence shared by every process on the same Redis: a hash and a counter per room.

    Keys: ``nexios-chat:room:<room>`` (name -> owner), ``nexios-chat:version:<room>``,
    ``nexios-chat:alive:<process>``. A room's keys are deleted when its last person leaves.
    """

    prefix = "nexios-chat"

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self.process = uuid.uuid4().hex[:12]
        self._redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)

    async def start(self) -> None:
        await self.heartbeat()

    async def stop(self) -> None:
        with contextlib.suppress(PresenceUnavailable):
            async with self._guard():
                await self._redis.delete(self._alive(self.process))
        await self._redis.aclose()

    async def heartbeat(self) -> bool:
        async with self._guard():
            was = await self._redis.set(self._alive(self.process), 1, ex=ALIVE_FOR, get=True)
        return was is not None

    async def claim(self, room: str, name: str, client: str, conn: str) -> int | None:
        owner = f"{self.process}|{client}|{conn}"
        async with self._guard():
            version = await self._claim(
                keys=self._keys(room), args=[_now_ms(), name, owner, client, self._alive("")]
            )
        return int(version) or None

    async def release(self, room: str, name: str, client: str, conn: str) -> int | None:
        return await self._release_owner(room, name, f"{self.process}|{client}|{conn}")

    async def roster(self, room: str) -> Roster:
        names, version = await self._read(room)
        processes = {owner.partition("|")[0] for owner in names.values()}
        async with self._guard():
            alive = {p: bool(await self._redis.exists(self._alive(p))) for p in processes}
        gone = [name for name, owner in names.items() if not alive[owner.partition("|")[0]]]
        if not gone:
            return Roster(version, sorted(names))
        for name in gone:
            await self._release_owner(room, name, names[name])
        # Read again: the versions the releases took are newer than what was read.
        names, version = await self._read(room)
        return Roster(version, sorted(names), sorted(gone))

    async def _read(self, room: str) -> tuple[dict[str, str], int]:
        names_key, version_key = self._keys(room)
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(names_key)
            pipe.get(version_key)
            held, version = await pipe.execute()
        return {k.decode(): v.decode() for k, v in held.items()}, int(version or 0)

    async def _release_owner(self, room: str, name: str, owner: str) -> int | None:
        async with self._guard():
            version = await self._release(keys=self._keys(room), args=[_now_ms(), name, owner])
        return int(version) or None

    def _keys(self, room: str) -> list[str]:
        return [f"{self.prefix}:room:{room}", f"{self.prefix}:version:{room}"]

    def _alive(self, process: str) -> str:
        return f"{self.prefix}:alive:{process}"

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        from redis.exceptions import RedisError

        try:
            yield
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(f"Redis is unreachable: {exc}") from exc


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
