"""Where playback sessions and stream slots live: one Protocol, two stores.

    SessionStore (protocol)
    ├── MemorySessionStore   one authz process (the local stack, unit tests): a restart forgets
    │                        every session
    └── RedisSessionStore    shared by every replica and kept across restarts; every key expires
                             (a replica that dies leaks nothing beyond the lifetimes)

Both apply :class:`authz.sessions.UserSessions` (the Redis store as one Lua script per call, over
keys of one viewer only). A store raises :class:`SessionStoreUnavailable` when it cannot be
asked; what to do then is the registry's decision (``authz.registry``). This is the one module of
authz that talks to Redis about sessions.

Redis keys (every key of one viewer shares the hash tag ``{u:<user>}``, so one script's keys sit
in one Redis Cluster slot)::

    pdrm:{u:<user>}:live                    ZSET  session id -> dies at (ms)
    pdrm:{u:<user>}:slots                   ZSET  session id -> slot freed at (ms)
    pdrm:{u:<user>}:link:<video>:<label>    STRING the newest session a JWT started on a video
    pdrm:{s:<sid>}                          STRING the session's facts (JSON), for lookups by id
    pdrm:{a:<plan>:<n>}:active              ZSET  session id -> slot freed at; 16 shards per plan,
                                            summed for the gauge of active sessions

Clocks: the callers pass the time (milliseconds); replicas' clocks are assumed NTP-synchronised,
and any skew adds to or takes from the lifetimes.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final, Protocol

from redis.exceptions import NoScriptError

from authz.ratelimit import WINDOW_HIT_LUA, Charge
from authz.sessions import Lifetimes, Outcome, SessionFacts, SlotResult, UserSessions
from playback_drm.redisconn import RedisClient

KEY_PREFIX: Final = "pdrm:"
ACTIVE_SHARDS: Final = 16
_SWEEP_EVERY: Final = 4096


class SessionStoreUnavailable(Exception):
    """The store could not be asked (Redis down, slow, refusing)."""


class SessionStore(Protocol):
    async def create(self, facts: SessionFacts, now_ms: int) -> None:
        """Record a new live session, its facts and its JWT link."""
        ...

    async def facts(self, sid: str) -> SessionFacts | None:
        """The facts of a session (None: no such session, or it is gone)."""
        ...

    async def touch(
        self,
        facts: SessionFacts,
        limit: int,
        now_ms: int,
        *,
        take: bool,
        charge: Charge | None = None,
    ) -> SlotResult:
        """A sign of life or a slot request. ``charge``: the request's pending hit on its
        viewer's rate limit window, counted in the same round trip where the store can (then
        settled, and a viewer over the limit gets :attr:`Outcome.RATE_LIMITED`)."""
        ...

    async def license(
        self,
        user: str,
        video: str,
        label: str,
        fallback: str,
        plan: str,
        limit: int,
        now_ms: int,
        charge: Charge | None = None,
    ) -> SlotResult:
        """A slot request under the JWT-only rule (:meth:`UserSessions.license`); ``charge``
        as for :meth:`touch`."""
        ...

    async def release(
        self, user: str, video: str, label: str, fallback: str, plan: str, now_ms: int
    ) -> tuple[bool, str]: ...

    async def end(self, facts: SessionFacts, now_ms: int) -> bool:
        """End a session at once; whether it was live."""
        ...

    async def active(self, plans: Iterable[str], now_ms: int) -> dict[str, int]:
        """Sessions holding a slot, per plan, across every replica."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def active_shard(sid: str) -> int:
    return zlib.crc32(sid.encode()) % ACTIVE_SHARDS


# ---------------------------------------------------------------------------------- memory


class MemorySessionStore:
    def __init__(self, life: Lifetimes) -> None:
        self._life = life
        self._users: dict[str, UserSessions] = {}
        self._facts: dict[str, tuple[SessionFacts, int]] = {}  # sid -> (facts, expires at)
        self._links: dict[tuple[str, str, str], tuple[str, int]] = {}
        self._active: dict[str, dict[str, int]] = {}  # plan -> sid -> slot freed at
        self._ops = 0

    def _user(self, user: str, now: int) -> UserSessions:
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            self._sweep(now)
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = UserSessions()
        return state

    def _sweep(self, now: int) -> None:
        """Forget what has expired: the memory store's TTLs."""
        for user, state in list(self._users.items()):
            state.prune(now, self._life)
            if state.empty:
                del self._users[user]
        self._facts = {s: f for s, f in self._facts.items() if f[1] > now}
        self._links = {k: v for k, v in self._links.items() if v[1] > now}
        for plan, members in self._active.items():
            self._active[plan] = {s: t for s, t in members.items() if t > now}

    def _mark(self, plan: str, result: SlotResult, now: int) -> None:
        members = self._active.setdefault(plan, {})
        if result.outcome in (Outcome.HELD, Outcome.TAKEN):
            members[result.sid] = now + self._life.stream_idle_ms
        else:
            members.pop(result.sid, None)

    async def create(self, facts: SessionFacts, now_ms: int) -> None:
        state = self._user(facts.user, now_ms)
        for gone in state.create(facts.sid, now_ms, self._life):
            self._facts.pop(gone, None)
        expires = now_ms + self._life.session_idle_ms
        self._facts[facts.sid] = (facts, expires)
        self._links[(facts.user, facts.video, facts.label)] = (facts.sid, expires)

    async def facts(self, sid: str) -> SessionFacts | None:
        found = self._facts.get(sid)
        return found[0] if found is not None else None

    async def touch(
        self,
        facts: SessionFacts,
        limit: int,
        now_ms: int,
        *,
        take: bool,
        charge: Charge | None = None,  # (in memory there is no round trip to share)
    ) -> SlotResult:
        result = self._user(facts.user, now_ms).touch(
            facts.sid, now_ms, limit, self._life, take=take
        )
        if result.outcome is not Outcome.ENDED and facts.sid in self._facts:
            self._facts[facts.sid] = (facts, now_ms + self._life.session_idle_ms)
        self._mark(facts.plan, result, now_ms)
        return result

    def _linked(self, user: str, video: str, label: str, now: int) -> str | None:
        found = self._links.get((user, video, label))
        return found[0] if found is not None and found[1] > now else None

    async def license(
        self,
        user: str,
        video: str,
        label: str,
        fallback: str,
        plan: str,
        limit: int,
        now_ms: int,
        charge: Charge | None = None,  # (in memory there is no round trip to share)
    ) -> SlotResult:
        linked = self._linked(user, video, label, now_ms)
        result = self._user(user, now_ms).license(linked, fallback, now_ms, limit, self._life)
        found = self._facts.get(result.sid)
        if found is not None:
            self._facts[result.sid] = (found[0], now_ms + self._life.session_idle_ms)
        self._mark(plan, result, now_ms)
        return result

    async def release(
        self, user: str, video: str, label: str, fallback: str, plan: str, now_ms: int
    ) -> tuple[bool, str]:
        linked = self._linked(user, video, label, now_ms)
        was, sid = self._user(user, now_ms).release(linked, fallback, now_ms, self._life)
        self._active.get(plan, {}).pop(sid, None)
        self._facts.pop(sid, None)
        return was, sid

    async def end(self, facts: SessionFacts, now_ms: int) -> bool:
        was = self._user(facts.user, now_ms).end(facts.sid)
        self._active.get(facts.plan, {}).pop(facts.sid, None)
        self._facts.pop(facts.sid, None)
        return was

    async def active(self, plans: Iterable[str], now_ms: int) -> dict[str, int]:
        return {
            plan: sum(1 for t in self._active.get(plan, {}).values() if t > now_ms)
            for plan in plans
        }

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._users.clear()
        self._facts.clear()
        self._links.clear()
        self._active.clear()


# ----------------------------------------------------------------------------------- Redis

# UserSessions in Lua. KEYS: live, slots[, link][, window]. ARGV: op, sid, now, session_idle,
# stream_idle, limit, max_sessions (milliseconds)[, window_limit, window_us, window_member].
# Ops: create, touch, take, license, release, end.
# With a window (a Charge of authz.ratelimit: the request's hit on its viewer's per-user window,
# the last key, in the same {u:<id>} slot), the hit is counted first by the window's own Lua
# (authz.ratelimit.WINDOW_HIT_LUA); a viewer over the limit gets outcome 5 and nothing else is
# touched.
# Returns {outcome, held, sid, window_allowed, window_count, window_oldest_us, window_now_us}
# (the window's fields -1 without one); for end and release the outcome is 1 when a live
# session ended.
_SESSIONS_LUA: Final = (
    WINDOW_HIT_LUA
    + """
local live, slots = KEYS[1], KEYS[2]
local op, sid = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])
local session_idle = tonumber(ARGV[4])
local stream_idle = tonumber(ARGV[5])
local limit = tonumber(ARGV[6])
local max_sessions = tonumber(ARGV[7])

local w = {-1, -1, -1, -1}
local w_limit = tonumber(ARGV[8] or '0')
if w_limit > 0 then
  w = window_hit(KEYS[#KEYS], w_limit, tonumber(ARGV[9]), 1, ARGV[10])
  if w[1] == 0 then
    return {5, 0, sid, w[1], w[2], w[3], w[4]}
  end
end

redis.call('ZREMRANGEBYSCORE', live, '-inf', ARGV[3])
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now - session_idle)

local function held()
  return redis.call('ZCOUNT', slots, '(' .. ARGV[3], '+inf')
end
local function reply(outcome, id)
  return {outcome, held(), id, w[1], w[2], w[3], w[4]}
end
local function keep()
  redis.call('PEXPIRE', live, session_idle + stream_idle)
  redis.call('PEXPIRE', slots, session_idle + stream_idle)
end
local function create(id)
  redis.call('ZADD', live, now + session_idle, id)
  local excess = redis.call('ZCARD', live) - max_sessions
  if excess > 0 then
    local gone = redis.call('ZPOPMIN', live, excess)
    for i = 1, #gone, 2 do redis.call('ZREM', slots, gone[i]) end
  end
end

if op == 'create' then
  create(sid)
  redis.call('SET', KEYS[3], sid, 'PX', session_idle)
  keep()
  return reply(1, sid)
end
if op == 'license' or op == 'release' then
  local linked = redis.call('GET', KEYS[3])
  if linked and redis.call('ZSCORE', live, linked) then
    sid = linked
  elseif op == 'license' and not redis.call('ZSCORE', live, sid) then
    create(sid)
  end
end
if op == 'end' or op == 'release' then
  local was = redis.call('ZREM', live, sid)
  redis.call('ZREM', slots, sid)
  return reply(was, sid)
end
if not redis.call('ZSCORE', live, sid) then
  return reply(0, sid)
end
redis.call('ZADD', live, now + session_idle, sid)
local slot = redis.call('ZSCORE', slots, sid)
local outcome = 1
if slot and tonumber(slot) > now then
  outcome = 2
elseif slot or op ~= 'touch' then
  if held() < limit then outcome = 3 else outcome = 4 end
end
if outcome == 2 or outcome == 3 then
  redis.call('ZADD', slots, now + stream_idle, sid)
elseif outcome == 4 and not slot then
  redis.call('ZADD', slots, now, sid)
end
keep()
return reply(outcome, sid)
"""
)


def user_key(user: str, part: str) -> str:
    return f"{KEY_PREFIX}{{u:{user}}}:{part}"


def link_key(user: str, video: str, label: str) -> str:
    return user_key(user, f"link:{video}:{label}")


def facts_key(sid: str) -> str:
    return f"{KEY_PREFIX}{{s:{sid}}}"


def active_key(plan: str, shard: int) -> str:
    return f"{KEY_PREFIX}{{a:{plan}:{shard}}}:active"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSessionStore:
    """One script call per check; the writes beside it (the facts' lifetime, the per-plan count)
    are made at most every third of their lifetime per session and process, so a playing
    session costs one round trip per check."""

    def __init__(
        self, client: RedisClient, life: Lifetimes, *, memo_entries: int = 100_000
    ) -> None:
        self._redis = client
        self._life = life
        self._script = client.register_script(_SESSIONS_LUA)
        self._memo_entries = memo_entries
        # session id -> when this process last extended its facts / wrote its per-plan entry
        self._facts_kept: OrderedDict[str, int] = OrderedDict()
        self._counted: OrderedDict[str, int] = OrderedDict()

    def _remember(self, memo: OrderedDict[str, int], sid: str, now: int) -> None:
        memo[sid] = now
        memo.move_to_end(sid)
        while len(memo) > self._memo_entries:
            memo.popitem(last=False)

    def _args(self, op: str, sid: str, now: int, limit: int = 0) -> list[str | int]:
        life = self._life
        return [op, sid, now, life.session_idle_ms, life.stream_idle_ms, limit, life.max_sessions]

    async def _call(
        self,
        keys: list[str],
        args: list[str | int],
        charge: Charge | None = None,
        user: str = "",
    ) -> tuple[int, int, str]:
        if charge is not None and not charge.pending:
            charge = None  # counted already (or failed): this call leaves the window alone
        if charge is not None:
            keys = [*keys, charge.key(user)]
            args = [*args, charge.limit, charge.window_us, charge.member]
        try:
            reply = await self._script(keys=keys, args=args)
        except Exception as exc:  # redis errors never leave this module
            if charge is not None:
                charge.failed = True
            raise SessionStoreUnavailable(type(exc).__name__) from exc
        if charge is not None:
            charge.settle(user, int(reply[3]), int(reply[4]), int(reply[5]), int(reply[6]))
        return int(reply[0]), int(reply[1]), _text(reply[2])

    async def _after(self, sid: str, plan: str, result: SlotResult, now: int) -> None:
        """Keep the facts alive with the session, and the per-plan count of slots true."""
        pipe = self._redis.pipeline(transaction=False)
        life = self._life
        if result.outcome is not Outcome.ENDED:
            kept = self._facts_kept.get(sid)
            if kept is None or now - kept >= life.session_idle_ms // 3:
                pipe.pexpire(facts_key(sid), life.session_idle_ms)
                self._remember(self._facts_kept, sid, now)
        shard = active_key(plan, active_shard(result.sid))
        counted = self._counted.get(result.sid)
        if result.outcome in (Outcome.HELD, Outcome.TAKEN):
            if (
                result.outcome is Outcome.TAKEN
                or counted is None
                or now - counted >= life.stream_idle_ms // 3
            ):
                pipe.zadd(shard, {result.sid: now + life.stream_idle_ms})
                pipe.pexpire(shard, life.key_ttl_ms)
                self._remember(self._counted, result.sid, now)
        elif counted is not None:
            pipe.zrem(shard, result.sid)
            del self._counted[result.sid]
        if not len(pipe):
            return
        try:
            await pipe.execute()
        except Exception as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc

    async def create(self, facts: SessionFacts, now_ms: int) -> None:
        keys = [
            user_key(facts.user, "live"),
            user_key(facts.user, "slots"),
            link_key(facts.user, facts.video, facts.label),
        ]
        args = self._args("create", facts.sid, now_ms)
        # Two slots (the facts go by session id): one pipeline, one connection, one round trip.
        # (A Script in a pipeline would ask SCRIPT EXISTS first: one more round trip each time.)
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(facts_key(facts.sid), facts.to_json(), px=self._life.session_idle_ms)
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            try:
                await pipe.execute()
                break
            except NoScriptError:  # a new or restarted Redis: load the script once, again
                if attempt == 2:
                    raise SessionStoreUnavailable("NoScriptError") from None
                await self._load_script()
            except Exception as exc:
                raise SessionStoreUnavailable(type(exc).__name__) from exc
        self._remember(self._facts_kept, facts.sid, now_ms)

    async def _load_script(self) -> None:
        try:
            await self._redis.script_load(_SESSIONS_LUA)
        except Exception as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc

    async def facts(self, sid: str) -> SessionFacts | None:
        try:
            raw = await self._redis.get(facts_key(sid))
        except Exception as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc
        if raw is None:
            return None
        try:
            return SessionFacts.from_json(sid, raw)
        except ValueError:
            return None  # not a record we wrote: no such session

    async def touch(
        self,
        facts: SessionFacts,
        limit: int,
        now_ms: int,
        *,
        take: bool,
        charge: Charge | None = None,
    ) -> SlotResult:
        keys = [user_key(facts.user, "live"), user_key(facts.user, "slots")]
        args = self._args("take" if take else "touch", facts.sid, now_ms, limit)
        outcome, held, sid = await self._call(keys, args, charge, facts.user)
        result = SlotResult(Outcome(outcome), held, sid)
        if result.outcome is not Outcome.RATE_LIMITED:
            await self._after(facts.sid, facts.plan, result, now_ms)
        return result

    async def license(
        self,
        user: str,
        video: str,
        label: str,
        fallback: str,
        plan: str,
        limit: int,
        now_ms: int,
        charge: Charge | None = None,
    ) -> SlotResult:
        keys = [user_key(user, "live"), user_key(user, "slots"), link_key(user, video, label)]
        args = self._args("license", fallback, now_ms, limit)
        outcome, held, sid = await self._call(keys, args, charge, user)
        result = SlotResult(Outcome(outcome), held, sid)
        if result.outcome is not Outcome.RATE_LIMITED:
            await self._after(sid, plan, result, now_ms)
        return result

    async def release(
        self, user: str, video: str, label: str, fallback: str, plan: str, now_ms: int
    ) -> tuple[bool, str]:
        keys = [user_key(user, "live"), user_key(user, "slots"), link_key(user, video, label)]
        was, _held, sid = await self._call(keys, self._args("release", fallback, now_ms))
        await self._forget(sid, plan)
        return bool(was), sid

    async def end(self, facts: SessionFacts, now_ms: int) -> bool:
        keys = [user_key(facts.user, "live"), user_key(facts.user, "slots")]
        was, _held, _sid = await self._call(keys, self._args("end", facts.sid, now_ms))
        await self._forget(facts.sid, facts.plan)
        return bool(was)

    async def _forget(self, sid: str, plan: str) -> None:
        self._facts_kept.pop(sid, None)
        self._counted.pop(sid, None)
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(facts_key(sid))
        pipe.zrem(active_key(plan, active_shard(sid)), sid)
        try:
            await pipe.execute()
        except Exception as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc

    async def active(self, plans: Iterable[str], now_ms: int) -> dict[str, int]:
        wanted = list(plans)
        pipe = self._redis.pipeline(transaction=False)
        for plan in wanted:
            for shard in range(ACTIVE_SHARDS):
                key = active_key(plan, shard)
                pipe.zremrangebyscore(key, "-inf", now_ms)
                pipe.zcount(key, f"({now_ms}", "+inf")
        try:
            replies = await pipe.execute()
        except Exception as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc
        counts = replies[1::2]
        return {
            plan: sum(int(c) for c in counts[i * ACTIVE_SHARDS : (i + 1) * ACTIVE_SHARDS])
            for i, plan in enumerate(wanted)
        }

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        return None  # the client belongs to the process (authz.server closes it)


__all__ = [
    "ACTIVE_SHARDS",
    "MemorySessionStore",
    "RedisSessionStore",
    "SessionStore",
    "SessionStoreUnavailable",
    "active_key",
    "facts_key",
    "link_key",
    "user_key",
]
