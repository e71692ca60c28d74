"""Faults under load (issue 14): mixed traffic through Envoy at two replicas of every service,
while, in turn, a dependency fails.

    python bench/faults.py                       # 200 req/s, 10 s per fault + 10 s after it
    python bench/faults.py --rate 100 --window 3 --after 3 --faults nats_node,vault_stop
    python bench/faults.py --redis sentinel      # the same on Redis Sentinel, plus its failover
    python bench/faults.py --redis cluster       # on Redis Cluster, plus a master's failover

The rig: Redis (one server by default; ``--redis sentinel``: a primary, 2 replicas and 3
sentinels; ``--redis cluster``: 3 masters with a replica each), a 3-node NATS
JetStream cluster (stream replicas 3), OpenBao with the content keys, the emulators (Auth,
Billing, DRM providers, origin), and two replicas, each Envoy + authz + extproc + broker, the way
two pods run. Traffic alternates between the two gateways, open loop (request i leaves at
``i / rate`` whatever happened to earlier ones, so a stall shows as latency), in a fixed mix:

    manifest   alice's entry manifest, JSON form (a new playback session)          allowed
    media      a segment of one of dave's sessions (signed URL, a sign of life)      allowed
    license    alice's ClearKey license for ``demo`` (JWT route; cached keys)        allowed
    widevine   alice's Widevine license, a new challenge each time (the provider)    allowed
    cold_keys  alice's ClearKey license for a video never asked for (Vault, Billing) allowed
    deny       bob: demo-uhd manifest and license, carol: demo manifest               denied
    cold_deny  a viewer Billing never heard of (no cached answer)                     denied

Faults, each for ``--window`` seconds, then ``--after`` seconds of recovery:

    nats_node        SIGKILL the NATS node most publishers are connected to (restarted after)
    billing_restart  the Billing emulator answers 503 for 1 s, then is stopped and started
                     again (its state restored, as a real Billing keeps it)
    vault_stop       OpenBao stopped (SIGSTOP: connections hang) for the window
    provider_slow    the DRM provider emulator answers Widevine in 2 s
    provider_errors  the DRM provider emulator answers Widevine with HTTP 500
    redis_failover   (Sentinel, Cluster) SIGKILL the Redis primary, or the cluster master
                     holding alice's keys (``{u:alice}``); a replica takes over, the killed node
                     stays dead for the rest of the run

Per fault: requests, errors by code, wrong allows (a denied viewer got a 200: must be 0), the
LicenseIssued events every 200 license answer stands for against the stream's, by license id
(lost and duplicated: must be 0), license p50/p99 (ClearKey, servable from cached keys and
entitlements) during the fault and after it, how long the failures took (a request that cannot be
served must fail fast), and the time to recover (from the fault's end to the last failed request
of an allowed kind). The broker's license cache is off (``LICENSE_CACHE_TTL=0``), so that every
license answer is a license id of its own and the event accounting is exact.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import media
from devstack.emulators.auth import load_or_create_key, sign_token
from devstack.stack import Stack
from tests.support.ha import (
    RedisClusterSet,
    SentinelSet,
    start_cluster,
    start_sentinel_set,
)
from tests.support.protobuf import varint
from tests.support.servers import (
    NatsCluster,
    RedisServer,
    VaultServer,
    start_nats_cluster,
    start_redis,
    start_vault,
)
from tests.support.stack import TEST_MEDIA, set_viewer, start_replica, start_stack

FAULTS: Final = (
    "nats_node",
    "billing_restart",
    "vault_stop",
    "provider_slow",
    "provider_errors",
)
# what a Redis of several nodes adds (``--redis sentinel`` or ``cluster``)
REDIS_FAULTS: Final = ("redis_failover",)
REDIS_SHAPES: Final = ("single", "sentinel", "cluster")
# one cycle of the mix; the kinds in DENIED must never be answered 200
MIX: Final = (
    ("manifest", 6),
    ("media", 14),
    ("license", 10),
    ("widevine", 2),
    ("cold_keys", 2),
    ("deny", 4),
    ("cold_deny", 2),
)
DENIED: Final = frozenset({"deny", "cold_deny"})
LICENSE_KINDS: Final = frozenset({"license", "widevine", "cold_keys"})
CLEARKEY: Final = "org.w3.clearkey"
COLD_VIDEOS_PER_SECOND: Final = 12  # provisioned ahead (keys in Vault, a manifest at the origin)
FAST: Final = 1.0  # seconds: what "fail fast" means
# The media requests' sessions belong to a viewer of their own: alice starts sessions all along,
# and a viewer's least recently seen sessions end beyond 100 (authz.sessions).
MEDIA_VIEWER: Final = "dave"
ALICE_KEYS: Final = "{u:alice}"  # the hash tag of alice's sessions and slots (authz.sessionstore)


# ------------------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    root: Path
    redis: RedisServer | SentinelSet | RedisClusterSet
    nats: NatsCluster
    vault: VaultServer
    replicas: list[Stack]
    cold_videos: int

    @property
    def first(self) -> Stack:
        return self.replicas[0]

    def billing(self, path: str) -> str:
        return f"http://127.0.0.1:{self.first.ports.billing}{path}"

    def provision_billing(self) -> None:
        """alice streams without a limit here (each cold video is a stream of its own); the
        Billing emulator keeps it across its restart (BILLING_STATE_FILE)."""
        set_viewer(self.first, "alice", "premium", max_streams=0)
        set_viewer(self.first, MEDIA_VIEWER, "premium", max_streams=0)


def _private_media(root: Path, cold: int, manifest: media.MediaManifest) -> Path:
    """The test media, copied (the origin refuses symlinks out of its folder), plus ``cold``
    videos the origin has (a manifest each: Billing's premium plan covers them)."""
    target = root / "media"
    shutil.copytree(manifest.root, target, dirs_exist_ok=True)
    for n in range(cold):
        folder = target / "origin" / f"cold-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target / "origin" / "demo" / "master.m3u8", folder / "master.m3u8")
    return target


def _cold_keys_into_vault(rig_vault: VaultServer, keys: dict[str, Any], cold: int) -> None:
    import hvac

    client = hvac.Client(url=rig_vault.url, token=rig_vault.token)
    try:
        for n in range(cold):
            client.secrets.kv.v2.create_or_update_secret(
                path=f"playback/keys/cold-{n}", secret=keys, mount_point="secret"
            )
    finally:
        client.adapter.close()


@contextlib.contextmanager
def rig(root: Path, *, cold_videos: int, redis_shape: str = "single") -> Iterator[Rig]:
    """Every server of the rig, started; all stopped on the way out, whatever failed."""
    with contextlib.ExitStack() as cleanup:
        redis: RedisServer | SentinelSet | RedisClusterSet
        if redis_shape == "sentinel":
            redis = start_sentinel_set(root / "redis-sentinel")
            cleanup.callback(redis.stop)
        elif redis_shape == "cluster":
            redis = start_cluster(root / "redis-cluster")
            cleanup.callback(redis.stop)
        elif redis_shape == "single":
            redis = start_redis(root)
            cleanup.callback(redis.process.stop)
        else:
            raise ValueError(f"unknown Redis shape {redis_shape!r}; known: {REDIS_SHAPES}")
        nats = start_nats_cluster(root)
        cleanup.callback(nats.stop)
        vault = start_vault(root)
        cleanup.callback(vault.process.stop)
        manifest = media.generate(TEST_MEDIA)
        media.load_keys_into_vault(manifest, url=vault.url, token=vault.token)
        demo_keys = json.loads((manifest.root / "keys.json").read_text())["videos"]["demo"]
        _cold_keys_into_vault(vault, demo_keys, cold_videos)
        settings: dict[str, Any] = {
            "redis_url": redis.url,
            "nats_url": nats.url,
            "vault_addr": vault.url,
            "vault_token": vault.token,
            "media_dir": _private_media(root, cold_videos, manifest),
            "envoy_access_log": False,
            "per_user_rps": 2000,  # the traffic is alice's mostly: no rate limit in the way
            "per_user_burst": 2000,
            "extra_env": {
                "EVENTS_STREAM_REPLICAS": "3",
                "LICENSE_CACHE_TTL": "0",
                "LOG_LEVEL": "WARNING",
            },
        }
        first = start_stack(root, **settings)
        cleanup.callback(first.stop)
        second = start_replica(first, "replica2")
        cleanup.callback(second.stop)
        built = Rig(root, redis, nats, vault, [first, second], cold_videos)
        built.provision_billing()
        yield built


# ---------------------------------------------------------------------------------- traffic


def widevine_challenge(n: int) -> bytes:
    """A Widevine SignedMessage{LICENSE_REQUEST, LicenseRequest{content_id, NEW, time}} whose
    content id is ``n``: a challenge of its own, so the provider is asked every time."""
    cid = f"content-{n}".encode()
    nested = b"\x0a" + varint(len(cid)) + cid
    inner = b"\x12" + varint(len(nested)) + nested + b"\x18\x01\x20" + varint(1_700_000_000)
    return b"\x08\x01\x12" + varint(len(inner)) + inner + b"\x1a\x04sign"


@dataclass(frozen=True, slots=True)
class Sent:
    kind: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


@dataclass(slots=True)
class Record:
    """One request. ``at``: when it left (seconds since the traffic started), what the fault
    windows are matched on; ``latency``: from when it was due to leave (a client that falls
    behind on a starved machine shows as latency, as a server that does)."""

    at: float
    kind: str
    status: int  # 0: no answer (connection error or client timeout)
    code: str  # the problem's code, "ok" for a 2xx
    latency: float
    replica: int
    license_id: str | None = None


def _segment_urls(session: dict[str, Any]) -> list[str]:
    """The first few segment URLs of a session's first variant (what hls.js fetches)."""
    with urllib.request.urlopen(session["url"], timeout=10) as resp:
        master = resp.read().decode()
    variant = next(line for line in master.splitlines() if line and not line.startswith("#"))
    variant_url = urllib.parse.urljoin(session["url"], variant)
    with urllib.request.urlopen(variant_url, timeout=10) as resp:
        playlist = resp.read().decode()
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    return [urllib.parse.urljoin(variant_url, s) for s in segments[:4]]


def _on(stack: Stack, url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return stack.gateway + parts.path + ("?" + parts.query if parts.query else "")


class Traffic:
    """The mix (module docstring), request by request, alternating between the replicas."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        first = rig.first
        users = ("alice", "bob", "carol", MEDIA_VIEWER)
        self.tokens = {u: first.token(u, ttl=7200) for u in users}
        keys = json.loads((first.media_dir / "keys.json").read_text())["videos"]["demo"]["keys"]
        kid = next(k["kid"] for k in keys if k["track"] != "AUDIO")
        kid_b64 = base64.urlsafe_b64encode(bytes.fromhex(kid)).rstrip(b"=").decode()
        challenge = json.dumps({"kids": [kid_b64], "type": "temporary"}).encode()
        self.clearkey_body = base64.b64encode(challenge).decode()
        self.segments: list[str] = []
        for _ in range(4):
            self.segments += _segment_urls(self._start_session())
        self.kinds = [kind for kind, weight in MIX for _ in range(weight)]
        self.counters: Counter[str] = Counter()
        self.cold_limit = rig.cold_videos
        # loading the key costs tens of milliseconds (RSA's checks): once, not per stranger
        self._key = load_or_create_key(first.jwt_key_path)

    def _start_session(self) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.rig.first.gateway}/playback/demo/manifest",
            headers={
                "Authorization": f"Bearer {self.tokens[MEDIA_VIEWER]}",
                "Accept": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.load(resp)
        return doc

    def _bearer(self, user: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}", **extra}

    def _license(self, user: str, video: str) -> tuple[dict[str, str], bytes]:
        body = {"videoId": video, "licenseRequest": self.clearkey_body, "keySystem": CLEARKEY}
        headers = self._bearer(user, **{"Content-Type": "application/json"})
        return headers, json.dumps(body).encode()

    def request(self, i: int) -> tuple[int, Sent]:
        replica = i % len(self.rig.replicas)
        stack = self.rig.replicas[replica]
        kind = self.kinds[(i // len(self.rig.replicas)) % len(self.kinds)]
        n = self.counters[kind]
        self.counters[kind] += 1
        gateway = stack.gateway
        if kind == "manifest":
            headers = self._bearer("alice", Accept="application/json")
            return replica, Sent(kind, "GET", f"{gateway}/playback/demo/manifest", headers)
        if kind == "media":
            url = _on(stack, self.segments[n % len(self.segments)])
            return replica, Sent(kind, "GET", url, {})
        if kind == "license":
            headers, body = self._license("alice", "demo")
            return replica, Sent(kind, "POST", f"{gateway}/drm/license", headers, body)
        if kind == "cold_keys":
            headers, body = self._license("alice", f"cold-{n % self.cold_limit}")
            return replica, Sent(kind, "POST", f"{gateway}/drm/license", headers, body)
        if kind == "widevine":
            url = f"{gateway}/drm/license/com.widevine.alpha?videoId=demo"
            headers = self._bearer("alice", **{"Content-Type": "application/octet-stream"})
            return replica, Sent(kind, "POST", url, headers, widevine_challenge(n))
        if kind == "cold_deny":
            token = sign_token(self._key, f"stranger-{n}", ttl=600)
            headers = {"Authorization": f"Bearer {token}"}
            return replica, Sent(kind, "GET", f"{gateway}/playback/demo/manifest", headers)
        # deny: in turn bob's UHD manifest, bob's UHD license, carol's manifest, bob's again
        if n % 4 == 1:
            headers, body = self._license("bob", "demo-uhd")
            return replica, Sent(kind, "POST", f"{gateway}/drm/license", headers, body)
        user, video = ("carol", "demo") if n % 4 == 2 else ("bob", "demo-uhd")
        url = f"{gateway}/playback/{video}/manifest"
        return replica, Sent(kind, "GET", url, self._bearer(user))

    async def run(self, rate: float, stop: asyncio.Event, records: list[Record]) -> None:
        """Send at ``rate`` until ``stop`` is set; one :class:`Record` per request."""
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=256)
        timeout = aiohttp.ClientTimeout(total=10)
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            start = loop.time()
            pending: set[asyncio.Task[None]] = set()

            async def one(i: int, scheduled: float) -> None:
                replica, sent = self.request(i)
                left = loop.time()
                status, code, license_id = 0, "no_answer", None
                try:
                    async with session.request(
                        sent.method, sent.url, headers=sent.headers, data=sent.body
                    ) as resp:
                        body = await resp.read()
                        status = resp.status
                        license_id = resp.headers.get("x-playback-license-id")
                        code = "ok" if status < 300 else _problem_code(resp.content_type, body)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    code = f"client_{type(exc).__name__}"
                latency = loop.time() - scheduled
                records.append(
                    Record(left - start, sent.kind, status, code, latency, replica, license_id)
                )

            i = 0
            while not stop.is_set():
                scheduled = start + i / rate
                delay = scheduled - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                else:
                    await asyncio.sleep(0)  # behind: let the requests already due go first
                task = asyncio.create_task(one(i, scheduled))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
            if pending:
                await asyncio.wait(pending)


def _problem_code(content_type: str, body: bytes) -> str:
    if content_type == "application/problem+json":
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(body).get("code"))
    return f"http_{content_type or 'unknown'}"


# ----------------------------------------------------------------------------------- faults


@dataclass
class Window:
    name: str
    detail: str = ""
    start: float = 0.0  # seconds since the traffic started
    cleared: float = 0.0  # the fault's end
    end: float = 0.0  # the end of the recovery window


def _http_json(url: str, method: str = "GET", doc: Any = None) -> Any:
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def publishers_node(cluster: NatsCluster) -> tuple[int, int]:
    """(index of the node most of our services publish through, how many do)."""
    counts = []
    for node in cluster.nodes:
        try:
            doc = _http_json(f"http://127.0.0.1:{node.monitor_port}/connz?limit=1024")
        except OSError:
            counts.append(0)
            continue
        names = [c.get("name", "") for c in doc.get("connections", [])]
        counts.append(sum(1 for name in names if name.startswith("playback-drm-")))
    best = max(range(len(counts)), key=counts.__getitem__)
    return best, counts[best]


class Injector:
    """Starts and clears each fault (blocking calls: run them in a thread)."""

    def __init__(self, rig: Rig, provider_delay: float = 2.0, billing_down: float = 1.0) -> None:
        self.rig = rig
        self.provider_delay = provider_delay
        # Billing stays down at least this long: a fast machine restarts it in a fraction of a
        # second, between two of the requests that need it
        self.billing_down = billing_down
        self._killed: int | None = None

    def inject(self, name: str) -> str:
        rig = self.rig
        drm = f"http://127.0.0.1:{rig.first.ports.drm}"
        if name == "nats_node":
            index, users = publishers_node(rig.nats)
            node = rig.nats.nodes[index]
            node.process.kill()
            self._killed = index
            return f"killed node :{node.port}, which {users} of our publishers used"
        if name == "billing_restart":
            # down for billing_down first (answering 503), then the process itself restarted: it
            # comes back with the viewers it was told about (BILLING_STATE_FILE), as a real
            # Billing comes back with its database
            _http_json(rig.billing("/admin/fail?status=503"), "POST")
            time.sleep(self.billing_down)
            started = time.monotonic()
            rig.first.stop_component("billing-emulator")
            rig.first.start_component("billing-emulator")
            return f"503 for {self.billing_down:g} s, then down {time.monotonic() - started:.1f} s"
        if name == "vault_stop":
            proc = rig.vault.process.proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGSTOP)
            return "SIGSTOP"
        if name == "provider_slow":
            _http_json(f"{drm}/control/widevine", "POST", {"delay": self.provider_delay})
            return f"Widevine answers in {self.provider_delay:g} s"
        if name == "provider_errors":
            _http_json(f"{drm}/control/widevine", "POST", {"failStatus": 500})
            return "Widevine answers HTTP 500"
        if name == "redis_failover":
            if isinstance(rig.redis, SentinelSet):
                port = rig.redis.primary_port()
                took = rig.redis.kill_primary()
                return f"killed primary :{port}; a replica promoted in {took:.1f} s"
            if isinstance(rig.redis, RedisClusterSet):
                port = rig.redis.owner_of(ALICE_KEYS).port
                took = rig.redis.kill_master_of(ALICE_KEYS)
                return (
                    f"killed master :{port} ({ALICE_KEYS}); its replica took over in {took:.1f} s"
                )
            raise ValueError("redis_failover needs --redis sentinel or cluster")
        raise ValueError(f"unknown fault {name!r}")

    def clear(self, name: str) -> None:
        rig = self.rig
        if name == "nats_node" and self._killed is not None:
            rig.nats.nodes[self._killed].restart()
            self._killed = None
        elif name == "vault_stop":
            proc = rig.vault.process.proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGCONT)
        elif name in ("provider_slow", "provider_errors"):
            _http_json(f"http://127.0.0.1:{rig.first.ports.drm}/control", "DELETE")

    def settle(self, name: str) -> None:
        """After the recovery window: the rig whole again for the next fault."""
        if name == "nats_node":
            self.rig.nats.wait_healthy()


# --------------------------------------------------------------------------------- the run


@dataclass
class FaultResult:
    window: Window
    records: list[Record]  # during and after
    answered: Counter[str] = field(default_factory=Counter)  # license id -> 200 answers
    in_stream: Counter[str] = field(default_factory=Counter)  # license id -> events

    def phase(self, during: bool) -> list[Record]:
        w = self.window
        if during:
            return [r for r in self.records if w.start <= r.at < w.cleared]
        return [r for r in self.records if w.cleared <= r.at < w.end]

    @property
    def wrong_allows(self) -> int:
        return sum(1 for r in self.records if r.kind in DENIED and r.status == 200)

    @property
    def lost(self) -> int:
        return sum(max(0, n - self.in_stream[i]) for i, n in self.answered.items())

    @property
    def duplicated(self) -> int:
        return sum(max(0, self.in_stream[i] - n) for i, n in self.answered.items())

    @property
    def failures(self) -> list[Record]:
        """Answers of allowed kinds that were not 2xx."""
        return [r for r in self.records if r.kind not in DENIED and not 200 <= r.status < 300]

    @property
    def slowest_failure(self) -> float:
        return max((r.latency for r in self.failures), default=0.0)

    @property
    def recovery(self) -> float:
        late = [r.at + r.latency for r in self.failures if r.at >= self.window.cleared]
        return max(0.0, max(late) - self.window.cleared) if late else 0.0


@dataclass
class Stream:
    """What the JetStream stream holds: event ids, and LicenseIssued events by license id."""

    messages: int
    event_ids: Counter[str]
    licenses: Counter[str]
    types: Counter[str]


async def read_stream(cluster: NatsCluster, stream: str = "PLAYBACK_EVENTS") -> Stream:
    import nats

    servers = [node.url for node in cluster.nodes if node.process.running]
    client = await nats.connect(servers)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        total = int(info.state.messages)
        sub = await js.subscribe("playback.events.>", ordered_consumer=True)
        event_ids: Counter[str] = Counter()
        licenses: Counter[str] = Counter()
        types: Counter[str] = Counter()
        for _ in range(total):
            msg = await sub.next_msg(timeout=10)
            doc = json.loads(msg.data)
            event_ids[str(doc.get("id"))] += 1
            kind = str(doc.get("type", ""))
            types[".".join(kind.split(".")[-3:-1]) or kind] += 1
            data = doc.get("data") or {}
            if kind.endswith("license.issued.v1") and data.get("licenseId"):
                licenses[str(data["licenseId"])] += 1
        await sub.unsubscribe()
        return Stream(total, event_ids, licenses, types)
    finally:
        await client.close()


async def wait_for_events(cluster: NatsCluster, expected: int, deadline_s: float = 60.0) -> Stream:
    """The stream, once it holds ``expected`` LicenseIssued events (or the deadline passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while True:
        try:
            found = await read_stream(cluster)
        except Exception:  # a leader election after a node came back: try again
            if loop.time() > deadline:
                raise
            await asyncio.sleep(1)
            continue
        if sum(found.licenses.values()) >= expected or loop.time() > deadline:
            return found
        await asyncio.sleep(1)


@dataclass
class RunReport:
    rate: float
    baseline: list[Record]
    results: list[FaultResult]
    stream: Stream
    answered_total: int
    records: list[Record]
    load: tuple[float, float]  # 1-minute load average when the traffic started and ended


async def run(
    rig: Rig,
    *,
    rate: float,
    window: float,
    after: float,
    faults: Sequence[str] = FAULTS,
    warmup: float = 3.0,
    baseline: float = 5.0,
    provider_delay: float = 2.0,
    log: Callable[[str], None] = lambda _: None,
) -> RunReport:
    """Traffic at ``rate`` for ``warmup`` (not counted) and ``baseline`` seconds, then each
    fault for ``window`` seconds and ``after`` seconds of recovery."""
    traffic = Traffic(rig)
    injector = Injector(rig, provider_delay)
    records: list[Record] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    load_start = os.getloadavg()[0]
    driver = asyncio.create_task(traffic.run(rate, stop, records))
    t0 = loop.time()
    windows: list[Window] = []
    try:
        await asyncio.sleep(warmup + baseline)
        for name in faults:
            current = Window(name, start=loop.time() - t0)
            log(f"{current.start:6.1f}s  {name}: inject")
            current.detail = await asyncio.to_thread(injector.inject, name)
            await asyncio.sleep(max(0.0, current.start + window - (loop.time() - t0)))
            await asyncio.to_thread(injector.clear, name)
            current.cleared = loop.time() - t0
            log(f"{current.cleared:6.1f}s  {name}: cleared ({current.detail})")
            await asyncio.sleep(after)
            current.end = loop.time() - t0
            await asyncio.to_thread(injector.settle, name)
            windows.append(current)
    finally:
        stop.set()
        await driver
        load = (load_start, os.getloadavg()[0])
        for name in faults:  # whatever failed above: leave nothing stopped
            with contextlib.suppress(Exception):
                await asyncio.to_thread(injector.clear, name)
    answered: Counter[str] = Counter(
        r.license_id for r in records if r.status == 200 and r.license_id
    )
    log(f"waiting for {sum(answered.values())} LicenseIssued events in JetStream")
    stream = await wait_for_events(rig.nats, sum(answered.values()))
    results = []
    for w in windows:
        mine = [r for r in records if w.start <= r.at < w.end]
        result = FaultResult(w, mine)
        ids = Counter(r.license_id for r in mine if r.status == 200 and r.license_id)
        result.answered = ids
        result.in_stream = Counter({i: stream.licenses[i] for i in ids})
        results.append(result)
    first_fault = windows[0].start if windows else float("inf")
    return RunReport(
        rate,
        [r for r in records if warmup <= r.at < first_fault],
        results,
        stream,
        sum(answered.values()),
        records,
        load,
    )


# ------------------------------------------------------------------------------- reporting


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return f"{1e3 * ordered[index]:.1f}"


def _license_latency(records: list[Record]) -> str:
    lat = [r.latency for r in records if r.kind == "license" and r.status == 200]
    return f"p50 {_ms(lat, 50)} / p99 {_ms(lat, 99)} ms (n={len(lat)})"


def _codes(records: list[Record]) -> str:
    counts = Counter(
        f"{r.status} {r.code}" for r in records if r.kind not in DENIED and r.status != 200
    )
    denied = Counter(f"{r.status} {r.code}" for r in records if r.kind in DENIED)
    allowed = ", ".join(f"{k}: {v}" for k, v in counts.most_common()) or "none"
    refused = ", ".join(f"{k}: {v}" for k, v in denied.most_common())
    return f"allowed kinds not 200: {allowed}\n      denied kinds: {refused}"


def format_report(report: RunReport) -> str:
    lines = [
        f"rate {report.rate:g} req/s over two replicas; mix {dict(MIX)}; load average "
        f"{report.load[0]:.1f} at the start, {report.load[1]:.1f} at the end (2 cores here)"
    ]
    base = report.baseline
    lines.append(
        f"baseline: {len(base)} requests, license {_license_latency(base)}, {_codes(base)}"
    )
    for res in report.results:
        w = res.window
        during, after = res.phase(True), res.phase(False)
        lines += [
            "",
            f"== {w.name}: {w.detail}; {w.cleared - w.start:.1f} s, then {w.end - w.cleared:.1f} s",
            f"   requests: {len(res.records)} ({len(during)} during, {len(after)} after)",
            f"   during: {_codes(during)}",
            f"   after:  {_codes(after)}",
            f"   wrong allows: {res.wrong_allows}",
            f"   LicenseIssued: answered {sum(res.answered.values())}, in JetStream "
            f"{sum(res.in_stream.values())} (lost {res.lost}, duplicated {res.duplicated})",
            f"   license during: {_license_latency(during)}",
            f"   license after:  {_license_latency(after)}",
            f"   failures: {len(res.failures)}, slowest {1e3 * res.slowest_failure:.0f} ms "
            f"(fast < {FAST:g} s: {sum(1 for r in res.failures if r.latency < FAST)})",
            f"   recovered {res.recovery:.2f} s after the fault ended",
        ]
    s = report.stream
    dup_ids = sum(n - 1 for n in s.event_ids.values() if n > 1)
    lines += [
        "",
        f"stream: {s.messages} events {dict(s.types)}; event ids stored twice: {dup_ids}; "
        f"LicenseIssued answered {report.answered_total}, in stream "
        f"{sum(s.licenses.values())}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds each fault lasts")
    parser.add_argument("--after", type=float, default=10.0, help="seconds watched after it")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not measured")
    parser.add_argument("--baseline", type=float, default=5.0)
    parser.add_argument("--faults", help="comma list (default: all that apply to --redis)")
    parser.add_argument("--redis", choices=REDIS_SHAPES, default="single")
    parser.add_argument("--records", type=Path, help="write every request's record (JSON lines)")
    args = parser.parse_args()
    known = FAULTS if args.redis == "single" else FAULTS + REDIS_FAULTS
    faults = [f for f in (args.faults or ",".join(known)).split(",") if f]
    unknown = sorted(set(faults) - set(known))
    if unknown:
        parser.error(f"unknown faults {unknown} with --redis {args.redis}; known: {known}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    seconds = args.warmup + args.baseline + len(faults) * (args.window + args.after) + 10
    cold = int(COLD_VIDEOS_PER_SECOND * seconds * args.rate / 200) + 10
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        rig(Path(tmp), cold_videos=cold, redis_shape=args.redis) as built,
    ):
        print(f"rig ready in {time.monotonic() - started:.0f} s", flush=True)
        report = asyncio.run(
            run(
                built,
                rate=args.rate,
                window=args.window,
                after=args.after,
                faults=faults,
                warmup=args.warmup,
                baseline=args.baseline,
                log=lambda line: print(line, flush=True),
            )
        )
    print(format_report(report))
    if args.records:
        with args.records.open("w") as out:
            for r in report.records:
                out.write(json.dumps(dataclasses.asdict(r)) + "\n")
    ok = all(r.wrong_allows == 0 and r.lost == 0 for r in report.results)
    return 0 if ok else 1


__all__ = ["FAULTS", "REDIS_FAULTS", "Rig", "RunReport", "format_report", "rig", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
