"""The whole local stack as a pytest fixture: real Envoy, our services, emulators, demo media.

``stack`` (session scope) is what the integration and browser tests use: the same
``devstack.stack.Stack`` that ``playback-drm up`` runs, on free loopback ports, in a temporary
folder. Demo media is generated once per machine into ``.local/test-media`` (reused while its
content stamp matches).
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import COMPONENTS, Stack, StackPorts, StackSettings
from devstack.supervise import free_port
from tests.support.secrets_audit import audit_logs

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_MEDIA = REPO_ROOT / ".local" / "test-media"


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> Reply:
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()})
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.read(), {k.lower(): v for k, v in err.headers.items()})


def add_subscriber(
    stack: Stack, user: str, plan: str = "premium", max_streams: int | None = 0
) -> str:
    """A subscriber of a test's own (Billing emulator): its concurrent-stream slots and rate
    limit budget are nobody else's in the session's stack. ``max_streams`` 0: no limit (every
    manifest request is a playback session of its own); None: the plan's."""
    set_viewer(stack, user, plan, max_streams)
    return user


PORT_ATTEMPTS = 3  # a port picked free can be taken by another process before ours binds it


def start_stack(root: Path, **settings: Any) -> Stack:
    settings.setdefault("media_dir", TEST_MEDIA)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        stack = Stack(StackSettings(root=root, ports=StackPorts.free(), **settings))
        stack.ensure_media()
        try:
            stack.start(COMPONENTS)
        except RuntimeError as exc:
            stack.stop()
            if "Address already in use" not in str(exc) or attempt == PORT_ATTEMPTS:
                raise
            continue  # the same stack on other free ports
        except BaseException:
            stack.stop()
            raise
        return stack
    raise AssertionError("unreachable")


# What each replica (a pod: Envoy beside authz, extproc and the broker) has of its own; the
# emulators, the origin and the stores are shared.
REPLICA_PORTS = (
    "gateway",
    "sidecar",
    "admin",
    "authz_grpc",
    "authz_http",
    "extproc_grpc",
    "extproc_http",
    "broker",
)


def start_replica(
    first: Stack,
    instance: str,
    components: tuple[str, ...] = ("authz", "extproc", "broker", "envoy"),
) -> Stack:
    """Another replica of ``first``'s services (same root, settings and shared dependencies,
    ports, logs and spill buffers of its own), started."""
    ports = dataclasses.replace(first.ports, **{name: free_port() for name in REPLICA_PORTS})
    replica = Stack(
        dataclasses.replace(
            first.settings, ports=ports, instance=instance, media_dir=first.media_dir
        )
    )
    try:
        replica.start(components)
    except BaseException:
        replica.stop()
        raise
    return replica


def stop_and_audit(stack: Stack) -> None:
    """Stop, then fail if any log the stack wrote holds a token, a key or a URL signature."""
    stack.stop()
    problems = audit_logs(stack)
    assert not problems, "secrets in logs:\n" + "\n".join(problems)


def set_viewer(stack: Stack, user: str, plan: str | None, max_streams: int | None = None) -> None:
    """Give ``user`` a subscription (and a concurrent-stream limit of their own) at Billing."""
    doc: dict[str, Any] = {"plan": plan}
    if max_streams is not None:
        doc["maxStreams"] = max_streams
    reply = http(
        f"http://127.0.0.1:{stack.ports.billing}/admin/users/{user}",
        method="PUT",
        body=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 200, reply.body


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = start_stack(tmp_path_factory.mktemp("stack"))
    # Many tests start a playback as alice, each a session with a stream slot for a minute: on
    # the shared stack she has no limit, so they cannot refuse each other. The limits are
    # tested with viewers of their own (tests/integration/test_stream_limits.py).
    set_viewer(started, "alice", "premium", max_streams=0)
    yield started
    stop_and_audit(started)


# The live stack (tests/integration/test_long_sessions.py, tests/e2e/test_live.py): short token
# lifetimes, so a test sees tokens expire under a playing session within seconds, and a short
# entitlement cache, so a revocation shows within seconds too.
LIVE_TOKEN_TTL = 6
LIVE_PLAYLIST_TTL = 10
LIVE_ENTITLEMENT_TTL = 2
LIVE_SESSION_CHECK = 1.0
LIVE_ENV = {
    "URL_TOKEN_TTL": str(LIVE_TOKEN_TTL),
    "URL_TOKEN_PLAYLIST_TTL": str(LIVE_PLAYLIST_TTL),
    "URL_TOKEN_WINDOW": "1",
    "ENTITLEMENT_TTL_SECONDS": str(LIVE_ENTITLEMENT_TTL),
    "ENTITLEMENT_DENY_TTL_SECONDS": "1",
    "SESSION_CHECK_SECONDS": str(LIVE_SESSION_CHECK),
    "LIVE_KEY_ROTATION_SEGMENTS": "3",
}


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second stack with :data:`LIVE_ENV` (every setting reaches its service through the
    environment, as with ``make run``)."""
    started = start_stack(tmp_path_factory.mktemp("live-stack"), extra_env=LIVE_ENV)
    yield started
    stop_and_audit(started)
