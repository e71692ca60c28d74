"""The per-user limit kept inside the ext_authz check (EnvoySettings.per_user_limit ``check``):
the route asks through a context extension, an admitted viewer's response carries the quota
headers, the request past the limit is a 429 ``rate_limited`` problem with Retry-After, and the
window is the rate limit service's (one budget per viewer, however Envoy asks)."""

from __future__ import annotations

import json
import uuid

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from authz.decision import Allow, CheckInput, Decision
from authz.entitlement import redis_client
from authz.ratelimit import (
    Charge,
    MemorySlidingWindow,
    RateLimitBackendUnavailable,
    RedisSlidingWindow,
    UserLimit,
    WindowResult,
    user_window_key,
)
from authz.server import AuthorizationService, RateLimitService
from authz.sessions import Outcome
from authz.sessionstore import RedisSessionStore, SessionStoreUnavailable
from playback_drm.contract import AUTHZ_LIMIT_KEY, AUTHZ_MODE_KEY, LIMIT_PER_USER, MODE_JWT
from playback_drm.events import MemorySink
from playback_drm.identity import USER_HEADER, VIDEO_HEADER
from tests.authz.test_sessions import LIFE, T0, facts

LIMIT = 3


class Admitting:
    """Admits every request for the viewer it is given (None: a bearer URL, no viewer)."""

    def __init__(self, user: str | None) -> None:
        self.user = user

    async def check(self, inp: CheckInput, charge: Charge | None = None) -> Decision:
        headers: tuple[tuple[str, str], ...] = ((VIDEO_HEADER, "demo"),)
        if self.user is not None:
            headers = ((USER_HEADER, self.user), *headers)
        return Allow(headers)


class Unreachable:
    async def hit(self, key: str, hits: int = 1) -> WindowResult:
        raise RateLimitBackendUnavailable("ConnectionError")


def _request(*, limited: bool) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = "/playback/demo/manifest"
    request.attributes.context_extensions[AUTHZ_MODE_KEY] = MODE_JWT
    if limited:
        request.attributes.context_extensions[AUTHZ_LIMIT_KEY] = LIMIT_PER_USER
    return request


def _service(
    user: str | None, window: MemorySlidingWindow | Unreachable, sink: MemorySink | None = None
) -> AuthorizationService:
    return AuthorizationService(
        Admitting(user),  # type: ignore[arg-type]
        sink or MemorySink(),
        UserLimit(window, LIMIT, 1.0),
    )


def _added(response: external_auth_pb2.CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.ok_response.response_headers_to_add}


async def test_the_viewer_past_the_limit_gets_a_429_problem_and_no_event() -> None:
    sink = MemorySink()
    service = _service("alice", MemorySlidingWindow(LIMIT, 60.0), sink)
    admitted = [await service.Check(_request(limited=True), None) for _ in range(LIMIT)]
    assert [r.status.code for r in admitted] == [0] * LIMIT
    assert [_added(r)["x-ratelimit-remaining"] for r in admitted] == ["2", "1", "0"]
    assert _added(admitted[0])["x-ratelimit-limit"] == '3, 3;w=1;name="per_user"'
    # the identity headers are the authorizer's, untouched by the quota headers
    assert [h.header.key for h in admitted[0].ok_response.headers] == [USER_HEADER, VIDEO_HEADER]

    refused = await service.Check(_request(limited=True), None)
    denied = refused.denied_response
    assert denied.status.code == 429
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert int(headers["retry-after"]) >= 1
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-ratelimit-remaining"] == "0"
    assert json.loads(denied.body)["code"] == "rate_limited"
    assert sink.events == []  # counted in metrics; a flood of 429s is not a flood of events


async def test_only_routes_that_ask_are_counted_and_only_viewers() -> None:
    window = MemorySlidingWindow(LIMIT, 60.0)
    unlimited = _service("alice", window)
    for _ in range(LIMIT + 2):
        response = await unlimited.Check(_request(limited=False), None)
        assert response.status.code == 0
        assert _added(response) == {}
    bearer = _service(None, window)  # a bearer media URL names no viewer: nothing to count
    for _ in range(LIMIT + 2):
        response = await bearer.Check(_request(limited=True), None)
        assert response.status.code == 0
    # none of it was counted: alice still has her whole budget
    assert (await window.hit("playback|user=alice")).remaining == LIMIT - 1


async def test_a_window_that_cannot_be_asked_admits_without_quota_headers() -> None:
    """Fail open, as the ratelimit filter does with failure_mode_deny false."""
    service = _service("alice", Unreachable())
    for _ in range(LIMIT + 1):
        response = await service.Check(_request(limited=True), None)
        assert response.status.code == 0
        assert _added(response) == {}


async def test_the_check_and_the_rate_limit_service_share_one_budget_per_viewer() -> None:
    window = MemorySlidingWindow(LIMIT, 60.0)
    service = _service("alice", window)
    await service.Check(_request(limited=True), None)
    rls = RateLimitService(window, LIMIT)
    request = rls_pb2.RateLimitRequest(domain="playback", hits_addend=LIMIT - 1)
    request.descriptors.add().entries.add(key="user", value="alice")
    answer = await rls.ShouldRateLimit(request, None)
    assert answer.overall_code == rls_pb2.RateLimitResponse.OK
    refused = await service.Check(_request(limited=True), None)
    assert refused.denied_response.status.code == 429


# --------------------------------------------------- the hit riding in the session store's script


async def test_the_session_script_counts_the_hit_and_refuses_past_the_limit(
    any_redis_url: str,
) -> None:
    """One round trip for both: the slot request counts the viewer's hit (settling the charge
    with the window's answer); past the limit the script refuses before touching the session,
    and the window is the one the check and the rate limit service ask on their own."""
    shared = redis_client(any_redis_url)
    client = shared.client
    try:
        user = f"fold-{uuid.uuid4().hex[:8]}"
        window = RedisSlidingWindow(client, LIMIT, 60.0)
        store = RedisSessionStore(client, LIFE)
        session = facts("F" * 22, user=user)
        await store.create(session, T0)
        settled = []
        for n in range(LIMIT):
            charge = window.charge()
            result = await store.touch(session, 2, T0 + 1 + n, take=True, charge=charge)
            assert result.outcome in (Outcome.TAKEN, Outcome.HELD)
            assert charge.result is not None
            assert charge.user == user
            settled.append(charge.result.remaining)
        assert settled == [2, 1, 0]
        over = window.charge()
        result = await store.touch(session, 2, T0 + 9, take=True, charge=over)
        assert result.outcome is Outcome.RATE_LIMITED
        assert over.result is not None
        assert not over.result.allowed
        assert over.result.reset_after > 0
        # the same window as the standalone hit (the check's own, and the RLS's descriptor)
        assert not (await window.hit(user_window_key(user))).allowed
        # the refused request touched no session: its slot is as the last admitted one left it
        assert (await store.touch(session, 2, T0 + 10, take=True)).outcome is Outcome.HELD
        # a JWT-only license request rides the same way
        licensed = window.charge()
        result = await store.license(user, "v", "lbl", "G" * 22, "basic", 2, T0 + 11, licensed)
        assert result.outcome is Outcome.RATE_LIMITED
        assert licensed.result is not None
    finally:
        await shared.aclose()


async def test_a_store_that_cannot_be_asked_fails_the_charge_so_the_check_does_not_wait_twice() -> (
    None
):
    shared = redis_client("redis://127.0.0.1:1")  # nothing listens there
    try:
        window = RedisSlidingWindow(shared.client, LIMIT, 60.0)
        charge = window.charge()
        store = RedisSessionStore(shared.client, LIFE)
        with pytest.raises(SessionStoreUnavailable):
            await store.touch(facts("H" * 22, user="u"), 2, T0, take=True, charge=charge)
        assert charge.failed
        assert not charge.pending
        assert await UserLimit(window, LIMIT, 1.0).hit("u", charge) is None  # open, at once
    finally:
        await shared.aclose()
