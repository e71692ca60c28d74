"""Conformance tests for the lean gRPC-over-HTTP/2 server (playback_drm/h2grpc/).

Three kinds of client drive a real ``LeanGrpcServer`` on loopback:

- grpcio (``grpc.aio`` channel and generated stubs) for call-level behaviour, with the real
  ext_authz (unary), ext_proc (bidi) and grpc_health (server-streaming Watch) services;
- python-hyper's ``h2`` (``H2Peer``), an independent HTTP/2 state machine that raises if the server
  breaks flow control, frame sizes or stream states;
- ``RawH2``, which writes exactly the frames a test builds, for protocol violations.

No test measures time: ordering is proven with PING barriers (the server answers frames in order)
and asyncio events set inside the servicers; timeouts only guard against a hung test.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import h2.events
import h2.settings
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as proc_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hpack import Encoder
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, SettingsFrame, WindowUpdateFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playback_drm.h2grpc import LeanGrpcServer
from tests.support.h2client import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2Peer,
    RawH2,
    data_events,
    frame,
    grpc_message,
    grpc_request_headers,
    settings_payload,
    split_messages,
)

AUTH_CHECK = "/envoy.service.auth.v3.Authorization/Check"
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
ECHO = "/test.Echo/Echo"
COUNT = "/test.Echo/Count"
GUARD = 10.0  # seconds before a test that waits for an event gives up: a hang guard only

# HTTP/2 error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 0x3, 0x4, 0x5
S_ENABLE_PUSH = 0x2
INTERNAL = str(grpc.StatusCode.INTERNAL.value[0])


async def until(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), GUARD)


# ---------------------------------------------------------------------------------- servicers


def check_request(mode: str = "", *, path: str = "/v/1", body: str = "", **headers: str) -> Any:
    request = auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.path = path
    http.body = body
    if mode:
        http.headers["x-test"] = mode
    for name, value in headers.items():
        http.headers[name.replace("_", "-")] = value
    return request


def ok_headers(response: Any) -> dict[str, str]:
    """The headers an OK reply carries, or a denied (big) one."""
    reply = (
        response.denied_response if response.HasField("denied_response") else response.ok_response
    )
    return {o.header.key: o.header.value for o in reply.headers}


class AuthServicer(auth_grpc.AuthorizationServicer):  # type: ignore[misc]
    """ext_authz Check; the request's ``x-test`` header picks the behaviour under test."""

    def __init__(self) -> None:
        self.calls = 0
        self.metadata: dict[str, str] = {}
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def Check(self, request: Any, context: Any) -> Any:
        self.calls += 1
        self.metadata = dict(context.invocation_metadata())
        http = request.attributes.request.http
        mode = http.headers.get("x-test", "")
        if mode == "abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, http.headers["x-details"])
        if mode == "raise":
            raise RuntimeError("handler bug")
        if mode == "set-code":
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details(http.headers["x-details"])
            return auth_pb2.CheckResponse()
        if mode == "wait":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        response = auth_pb2.CheckResponse()
        # a big reply is a denied one (a body), the others are OK replies: a oneof
        reply = response.denied_response if mode == "big" else response.ok_response
        for key, value in (
            ("x-path", http.path),
            ("x-body-sha256", hashlib.sha256(http.body.encode()).hexdigest()),
        ):
            reply.headers.add(header=base_pb2.HeaderValue(key=key, value=value))
        if mode == "big":
            response.denied_response.body = "x" * int(http.headers["x-size"])
        return response


def proc_request(seq: int | str, mode: str = "", size: int = 0) -> Any:
    headers = [base_pb2.HeaderValue(key="x-seq", raw_value=str(seq).encode())]
    if mode:
        headers.append(base_pb2.HeaderValue(key="x-test", raw_value=mode.encode()))
    if size:
        headers.append(base_pb2.HeaderValue(key="x-size", raw_value=str(size).encode()))
    request = proc_pb2.ProcessingRequest()
    request.request_headers.headers.headers.extend(headers)
    return request


def seq_of(response: Any) -> str:
    mutation = response.request_headers.response.header_mutation
    return str(mutation.set_headers[0].header.raw_value.decode())


def big_proc_response(size: int) -> Any:
    response = proc_pb2.ProcessingResponse()
    response.request_body.response.body_mutation.body = b"b" * size
    return response


class ExtProcServicer(proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """ext_proc Process: answers every request in order, echoing its ``x-seq`` header."""

    def __init__(self) -> None:
        self.received = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.iterator_ended = asyncio.Event()

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        try:
            async for request in request_iterator:
                self.received += 1
                headers = {
                    h.key: h.raw_value.decode() for h in request.request_headers.headers.headers
                }
                mode = headers.get("x-test", "")
                if mode == "wait":
                    self.started.set()
                    await self.release.wait()
                if mode in ("big-then-raise", "big-then-abort"):
                    yield big_proc_response(int(headers["x-size"]))
                    if mode == "big-then-raise":
                        raise RuntimeError("handler bug after a write")
                    await context.abort(grpc.StatusCode.ABORTED, "stopped after a write")
                if mode == "set-code":
                    context.set_code(grpc.StatusCode.DATA_LOSS)
                    context.set_details("set after a write")
                    return
                response = proc_pb2.ProcessingResponse()
                response.request_headers.response.header_mutation.set_headers.add(
                    header=base_pb2.HeaderValue(key="x-seq", raw_value=headers["x-seq"].encode())
                )
                yield response
            self.iterator_ended.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def echo(request: bytes, context: Any) -> bytes:
    return request


async def count(requests: AsyncIterator[bytes], context: Any) -> bytes:
    total = 0
    messages = 0
    async for request in requests:
        total += len(request)
        messages += 1
    return f"{messages} {total}".encode()


class WatchedHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc_health's servicer, telling the test when a Watch call has ended on the server."""

    def __init__(self) -> None:
        super().__init__()
        self.watch_ended = asyncio.Event()

    async def Watch(self, request: Any, context: Any) -> None:
        try:
            await super().Watch(request, context)
        finally:
            self.watch_ended.set()


@dataclass
class Harness:
    server: LeanGrpcServer
    port: int
    auth: AuthServicer = field(default_factory=AuthServicer)
    proc: ExtProcServicer = field(default_factory=ExtProcServicer)
    health: WatchedHealth = field(default_factory=WatchedHealth)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    clients: list[RawH2 | H2Peer] = field(default_factory=list)

    def open_streams(self) -> int:
        return sum(len(conn.streams) for conn in self.server.connections)

    async def raw(self, **options: Any) -> RawH2:
        client = await RawH2.open(self.address, **options)
        self.clients.append(client)
        return client

    async def peer(self, **options: Any) -> H2Peer:
        client = await H2Peer.open(self.address, **options)
        self.clients.append(client)
        return client


def register(
    server: LeanGrpcServer, harness_health: WatchedHealth
) -> tuple[AuthServicer, ExtProcServicer]:
    auth = AuthServicer()
    proc = ExtProcServicer()
    auth_grpc.add_AuthorizationServicer_to_server(auth, server)
    proc_grpc.add_ExternalProcessorServicer_to_server(proc, server)
    health_pb2_grpc.add_HealthServicer_to_server(harness_health, server)
    # a generic handler only (no add_registered_method_handlers), with raw bytes messages
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "Count": grpc.stream_unary_rpc_method_handler(count),
                },
            ),
        )
    )
    return auth, proc


async def start_harness(address: str = "127.0.0.1:0", **options: int) -> Harness:
    server = LeanGrpcServer(**options)
    servicer = WatchedHealth()
    auth, proc = register(server, servicer)
    port = server.add_insecure_port(address)
    await server.start()
    return Harness(server, port, auth, proc, servicer)


@pytest.fixture
async def make_harness() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    started: list[Harness] = []

    async def make(address: str = "127.0.0.1:0", **options: int) -> Harness:
        harness = await start_harness(address, **options)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        for client in harness.clients:
            await client.close()
        await harness.server.stop(None)


@pytest.fixture
async def harness(make_harness: Callable[..., Awaitable[Harness]]) -> Harness:
    return await make_harness()


@pytest.fixture
async def channel(harness: Harness) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(harness.target) as chan:
        yield chan


# ------------------------------------------------------------------------ grpcio: unary calls


async def test_unary_ok_with_metadata(harness: Harness, channel: grpc.aio.Channel) -> None:
    stub = auth_grpc.AuthorizationStub(channel)
    response = await stub.Check(
        check_request(path="/video/7", body="hello"), metadata=(("x-user", "alice"),)
    )
    headers = ok_headers(response)
    assert headers["x-path"] == "/video/7"
    assert headers["x-body-sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert harness.auth.calls == 1
    assert harness.auth.metadata["x-user"] == "alice"
    assert not any(name.startswith(":") for name in harness.auth.metadata)
    assert harness.open_streams() == 0


@pytest.mark.parametrize(
    "details", ["plain words", "refusé: 100% sûr ✓ — 日本", "line\nbreak and a %41 literal"]
)
async def test_abort_code_and_details_round_trip(channel: grpc.aio.Channel, details: str) -> None:
    stub = auth_grpc.AuthorizationStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(check_request("abort", x_details=details))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == details


async def test_handler_exception_is_internal_and_logged(
    harness: Harness, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    stub = auth_grpc.AuthorizationStub(channel)
    with (
        caplog.at_level(logging.ERROR, logger="playback_drm.h2grpc"),
        pytest.raises(grpc.aio.AioRpcError) as caught,
    ):
        await stub.Check(check_request("raise"))
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"  # the exception text stays in the log
    logged = [r for r in caplog.records if r.name.startswith("playback_drm.h2grpc") and r.exc_info]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], RuntimeError)
    # the server keeps serving on the same connection
    assert ok_headers(await stub.Check(check_request(path="/after")))["x-path"] == "/after"


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)  # not registered on the server
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="d"))
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" in (
        caught.value.details() or ""
    )


async def test_set_code_and_details_unary(channel: grpc.aio.Channel) -> None:
    stub = auth_grpc.AuthorizationStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(check_request("set-code", x_details="not yet"))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "not yet"


async def test_generic_handler_with_raw_bytes_and_message_limit(
    make_harness: Callable[..., Awaitable[Harness]],
) -> None:
    harness = await make_harness(max_message_bytes=1000)
    async with grpc.aio.insecure_channel(harness.target) as chan:
        call = chan.unary_unary(ECHO)
        assert await call(b"\x00\xff" * 500) == b"\x00\xff" * 500  # exactly at the limit
        assert await call(b"") == b""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"x" * 1001)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await call(b"still serving") == b"still serving"


async def test_request_over_the_limit_is_resource_exhausted(
    make_harness: Callable[..., Awaitable[Harness]],
) -> None:
    harness = await make_harness(max_message_bytes=64 << 10)
    async with grpc.aio.insecure_channel(harness.target) as chan:
        stub = auth_grpc.AuthorizationStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(check_request(body="x" * (200 << 10)))
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert harness.auth.calls == 0
        assert ok_headers(await stub.Check(check_request(path="/ok")))["x-path"] == "/ok"
    assert harness.open_streams() == 0


async def test_three_megabytes_each_way(harness: Harness, channel: grpc.aio.Channel) -> None:
    body = "".join(chr(0x61 + i % 26) for i in range(3 << 20))
    stub = auth_grpc.AuthorizationStub(channel)
    response = await stub.Check(check_request("big", body=body, x_size=str(3 << 20)))
    assert ok_headers(response)["x-body-sha256"] == hashlib.sha256(body.encode()).hexdigest()
    assert response.denied_response.body == "x" * (3 << 20)
    assert harness.open_streams() == 0


async def test_five_hundred_concurrent_calls_on_one_channel(
    harness: Harness, channel: grpc.aio.Channel
) -> None:
    stub = auth_grpc.AuthorizationStub(channel)
    responses = await asyncio.gather(
        *(stub.Check(check_request(path=f"/v/{i}")) for i in range(500))
    )
    assert [ok_headers(r)["x-path"] for r in responses] == [f"/v/{i}" for i in range(500)]
    assert harness.auth.calls == 500
    assert len(harness.server.connections) == 1
    assert harness.open_streams() == 0


async def test_unix_socket(make_harness: Callable[..., Awaitable[Harness]], tmp_path: Path) -> None:
    path = tmp_path / "grpc.sock"
    harness = await make_harness(f"unix:{path}")
    assert harness.port == 0
    async with grpc.aio.insecure_channel(f"unix:{path}") as chan:
        response = await auth_grpc.AuthorizationStub(chan).Check(check_request(path="/unix"))
    assert ok_headers(response)["x-path"] == "/unix"


async def test_client_cancel_cancels_the_unary_handler(
    harness: Harness, channel: grpc.aio.Channel
) -> None:
    call = auth_grpc.AuthorizationStub(channel).Check(check_request("wait"))
    await until(harness.auth.started)
    assert call.cancel()
    await until(harness.auth.cancelled)
    assert harness.open_streams() == 0
    with pytest.raises(asyncio.CancelledError):
        await call


# --------------------------------------------------------------------- grpcio: streaming calls


async def test_bidi_answers_each_message_in_order(
    harness: Harness, channel: grpc.aio.Channel
) -> None:
    call = proc_grpc.ExternalProcessorStub(channel).Process()
    for seq in range(50):  # lock-step: each answer arrives before the next request is sent
        await call.write(proc_request(seq))
        assert seq_of(await call.read()) == str(seq)
    for seq in range(50, 300):  # then a burst
        await call.write(proc_request(seq))
    await call.done_writing()
    answers = [seq_of(r) async for r in _drain(call)]
    assert answers == [str(seq) for seq in range(50, 300)]
    assert await call.code() is grpc.StatusCode.OK
    assert harness.proc.received == 300
    assert harness.proc.iterator_ended.is_set()


async def _drain(call: Any) -> AsyncIterator[Any]:
    while (message := await call.read()) is not grpc.aio.EOF:
        yield message


async def test_client_half_close_ends_the_server_iterator(
    harness: Harness, channel: grpc.aio.Channel
) -> None:
    call = proc_grpc.ExternalProcessorStub(channel).Process()
    await call.write(proc_request("only"))
    assert seq_of(await call.read()) == "only"
    assert not harness.proc.iterator_ended.is_set()
    await call.done_writing()
    await until(harness.proc.iterator_ended)
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_client_cancel_cancels_the_bidi_handler(
    harness: Harness, channel: grpc.aio.Channel
) -> None:
    call = proc_grpc.ExternalProcessorStub(channel).Process()
    await call.write(proc_request(1, "wait"))
    await until(harness.proc.started)
    call.cancel()
    await until(harness.proc.cancelled)
    assert harness.open_streams() == 0


async def test_bidi_set_code_after_a_message(channel: grpc.aio.Channel) -> None:
    call = proc_grpc.ExternalProcessorStub(channel).Process()
    await call.write(proc_request(1))
    await call.write(proc_request(2, "set-code"))
    assert seq_of(await call.read()) == "1"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() is grpc.StatusCode.DATA_LOSS
    assert caught.value.details() == "set after a write"


@pytest.mark.parametrize(
    ("mode", "code", "details"),
    [
        ("big-then-raise", grpc.StatusCode.INTERNAL, "internal error"),
        ("big-then-abort", grpc.StatusCode.ABORTED, "stopped after a write"),
    ],
)
async def test_error_after_a_large_write_delivers_the_message_first(
    channel: grpc.aio.Channel, mode: str, code: grpc.StatusCode, details: str
) -> None:
    """The message written before the error is whole, then the status (not a cut-off frame)."""
    call = proc_grpc.ExternalProcessorStub(channel).Process()
    await call.write(proc_request(1, mode, size=1 << 20))
    message = await call.read()
    assert message.request_body.response.body_mutation.body == b"b" * (1 << 20)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() is code
    assert caught.value.details() == details


async def test_health_check_and_watch(harness: Harness, channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert (await stub.Check(health_pb2.HealthCheckRequest())).status == serving
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="authz"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    watch = stub.Watch(health_pb2.HealthCheckRequest(service="authz"))
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    await harness.health.set("authz", serving)
    assert (await watch.read()).status == serving
    await harness.health.set("authz", not_serving)
    assert (await watch.read()).status == not_serving
    assert not harness.health.watch_ended.is_set()
    watch.cancel()
    await until(harness.health.watch_ended)  # the server-side Watch was cancelled
    assert harness.open_streams() == 0
    assert (await stub.Check(health_pb2.HealthCheckRequest(service="authz"))).status == not_serving


# ------------------------------------------------------------------- raw HTTP/2: connection level


def goaway_code(received: GoAwayFrame) -> int:
    return int(received.error_code)


@pytest.mark.parametrize(
    "preface",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r",  # the last byte wrong
        b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n",
    ],
)
async def test_bad_preface_gets_goaway_and_close(harness: Harness, preface: bytes) -> None:
    raw = await harness.raw(preface=preface, settings=None)
    goaway = await raw.goaway()  # reads to EOF: the server closed the connection
    assert goaway_code(goaway) == PROTOCOL_ERROR
    assert goaway.last_stream_id == 0


async def test_server_settings_and_settings_ack(make_harness: Callable[..., Any]) -> None:
    harness = await make_harness(max_concurrent_streams=7)
    raw = await harness.raw(settings=None)
    first = await raw.read_frame()
    assert first is not None
    assert isinstance(first.frame, SettingsFrame)
    assert "ACK" not in first.frame.flags
    assert raw.server_settings[S_MAX_CONCURRENT_STREAMS] == 7
    assert raw.server_settings[S_ENABLE_PUSH] == 0
    raw.send(frame(SETTINGS, 0, 0, settings_payload({S_MAX_FRAME_SIZE: 32768})))
    frames = await raw.ping()
    acks = [r for r in frames if isinstance(r.frame, SettingsFrame) and "ACK" in r.frame.flags]
    assert len(acks) == 1
    assert acks[0].frame.settings == {}
    await raw.close()


async def test_h2_settings_acknowledged(harness: Harness) -> None:
    peer = await harness.peer()
    peer.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 50})
    await peer.flush()
    events = await peer.events_until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
    assert isinstance(events[-1], h2.events.SettingsAcknowledged)
    await peer.close()


async def test_ping_is_answered_with_the_same_payload(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    raw.send(frame(PING, 0x1, 0, b"an-ack!!"))  # a PING ACK from us is not answered
    frames = await raw.ping(b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")
    pings = [r.frame for r in frames if isinstance(r.frame, PingFrame)]
    assert len(pings) == 1
    assert "ACK" in pings[0].flags
    assert pings[0].opaque_data == b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"
    assert pings[0].stream_id == 0

    peer = await harness.peer()
    events = await peer.ping(b"h2-ping!")
    assert isinstance(events[-1], h2.events.PingAckReceived)
    await raw.close()
    await peer.close()


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(PING, 0, 0, b"short"), FRAME_SIZE_ERROR),
        (frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 1, b""), PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 0, b"\x00\x04\x00"), FRAME_SIZE_ERROR),
        (frame(SETTINGS, 0x1, 0, b"\x00\x04\x00\x00\x00\x01"), FRAME_SIZE_ERROR),
        (frame(SETTINGS, 0, 0, settings_payload({S_MAX_FRAME_SIZE: 100})), PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 0, settings_payload({S_ENABLE_PUSH: 2})), PROTOCOL_ERROR),
        (frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00"), FRAME_SIZE_ERROR),
        (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), PROTOCOL_ERROR),
        (frame(RST_STREAM, 0, 0, struct.pack(">I", 0)), PROTOCOL_ERROR),
        (frame(PRIORITY, 0, 0, b"\x00" * 5), PROTOCOL_ERROR),
        (frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02"), PROTOCOL_ERROR),
        (frame(DATA, 0, 0, grpc_message(b"")), PROTOCOL_ERROR),
        (frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),
        # a frame header announcing more than our SETTINGS_MAX_FRAME_SIZE (1 MiB)
        (
            struct.pack(">I", 2 << 20)[1:] + bytes((DATA, 0)) + struct.pack(">I", 1),
            FRAME_SIZE_ERROR,
        ),
    ],
    ids=[
        "ping-length",
        "ping-on-stream",
        "settings-on-stream",
        "settings-length",
        "settings-ack-with-payload",
        "max-frame-size-too-small",
        "enable-push-2",
        "window-update-length",
        "window-update-zero",
        "rst-stream-0",
        "priority-stream-0",
        "push-promise",
        "data-stream-0",
        "continuation-without-headers",
        "frame-too-large",
    ],
)
async def test_connection_errors_get_goaway(harness: Harness, bad: bytes, code: int) -> None:
    raw = await harness.raw(settings={})
    raw.send(bad)
    assert goaway_code(await raw.goaway()) == code
    await _still_serving(harness)


async def _still_serving(harness: Harness) -> None:
    """A fresh connection gets a correct answer: the server survived what the test did."""
    raw = await harness.raw(settings={})
    raw.send(raw.request(1, AUTH_CHECK, check_request(path="/fresh").SerializeToString()))
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    reply = auth_pb2.CheckResponse.FromString(response.messages[0])
    assert ok_headers(reply)["x-path"] == "/fresh"
    await raw.close()


async def test_unknown_frame_types_are_ignored(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    raw.send(
        frame(0x20, 0xFF, 0, b"extension"),
        frame(0xFA, 0, 1, b"on an idle stream"),
        frame(0x0B, 0, 0, b"\x00\x03abc"),  # ORIGIN-like, not implemented by the server
    )
    frames = await raw.ping()
    assert not any(isinstance(r.frame, GoAwayFrame) for r in frames)
    raw.send(raw.request(1, AUTH_CHECK, check_request(path="/after-unknown").SerializeToString()))
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    await raw.close()


async def test_unknown_frame_inside_a_header_block_is_an_error(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    block = raw.block(grpc_request_headers(AUTH_CHECK))
    raw.send(frame(HEADERS, 0, 1, block[:3]), frame(0x20, 0, 0, b"x"))
    assert goaway_code(await raw.goaway()) == PROTOCOL_ERROR


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # indexed field 0
        b"\xff\xff\xff\xff\xff\x0f",  # index far beyond both tables
        b"\x3f\xe1\xff\x03",  # dynamic table size update beyond SETTINGS_HEADER_TABLE_SIZE
        b"\x00\x81\xff\x01a",  # huffman string with invalid padding
        b"\x00\x01\xff\x01a",  # a header name that is not UTF-8
        b"\x00\x05ab",  # a literal cut short
    ],
)
async def test_garbage_hpack_gets_compression_error(harness: Harness, block: bytes) -> None:
    raw = await harness.raw(settings={})
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    goaway = await raw.goaway()
    assert goaway_code(goaway) == COMPRESSION_ERROR
    await _still_serving(harness)


async def test_client_goaway_closes_after_the_open_stream(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    raw.send(raw.request(1, AUTH_CHECK, check_request("wait").SerializeToString()))
    await until(harness.auth.started)
    raw.send(frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
    raw.send(raw.request(3, AUTH_CHECK, check_request().SerializeToString()))
    refused = await raw.response(3)
    assert refused.reset_code == REFUSED_STREAM
    harness.auth.release.set()
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    await raw.read_to_eof()  # then the server closes
    assert harness.auth.calls == 1


# ----------------------------------------------------------------------- raw HTTP/2: stream ids


async def test_data_on_an_idle_stream_is_a_protocol_error(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    raw.send(frame(DATA, END_STREAM, 1, grpc_message(b"")))
    assert goaway_code(await raw.goaway()) == PROTOCOL_ERROR


@pytest.mark.parametrize("kind", ["headers", "data"])
async def test_even_stream_id_is_a_protocol_error(harness: Harness, kind: str) -> None:
    raw = await harness.raw(settings={})
    if kind == "headers":
        raw.send(raw.headers(2, grpc_request_headers(AUTH_CHECK), end_stream=True))
    else:
        raw.send(frame(DATA, END_STREAM, 2, grpc_message(b"")))
    assert goaway_code(await raw.goaway()) == PROTOCOL_ERROR


async def test_stream_id_going_backwards_is_a_protocol_error(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    raw.send(raw.request(5, AUTH_CHECK, check_request().SerializeToString()))
    assert (await raw.response(5)).trailers["grpc-status"] == "0"
    raw.send(raw.request(3, AUTH_CHECK, check_request().SerializeToString()))
    goaway = await raw.goaway()
    assert goaway_code(goaway) == PROTOCOL_ERROR
    assert goaway.last_stream_id == 5
    assert harness.auth.calls == 1


async def test_more_than_max_concurrent_streams_are_refused(
    make_harness: Callable[..., Awaitable[Harness]],
) -> None:
    harness = await make_harness(max_concurrent_streams=2)
    raw = await harness.raw(settings={})
    headers = grpc_request_headers(AUTH_CHECK)
    raw.send(raw.headers(1, headers), raw.headers(3, headers), raw.headers(5, headers))
    assert (await raw.response(5)).reset_code == REFUSED_STREAM
    assert harness.open_streams() == 2
    body = grpc_message(check_request(path="/one").SerializeToString())
    raw.send(frame(DATA, END_STREAM, 1, body))
    assert (await raw.response(1)).trailers["grpc-status"] == "0"
    # a slot is free again; a DATA frame for the refused stream is ignored
    raw.send(frame(DATA, END_STREAM, 5, body), raw.request(7, AUTH_CHECK, body[5:]))
    response = await raw.response(7)
    assert response.trailers["grpc-status"] == "0"
    assert harness.auth.calls == 2
    await raw.close()


async def test_rst_stream_mid_call_cancels_the_handler(harness: Harness) -> None:
    peer = await harness.peer()
    stream_id = await peer.start_unary(AUTH_CHECK, check_request("wait").SerializeToString())
    await until(harness.auth.started)
    peer.conn.reset_stream(stream_id, CANCEL)
    await peer.flush()
    await until(harness.auth.cancelled)
    assert harness.open_streams() == 0
    # the connection and the server stay healthy
    second = await peer.start_unary(AUTH_CHECK, check_request(path="/next").SerializeToString())
    events = await peer.events_until(
        lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == second
    )
    data = b"".join(e.data for e in data_events(events, second))
    reply = auth_pb2.CheckResponse.FromString(split_messages(data)[0])
    assert ok_headers(reply)["x-path"] == "/next"
    assert not any(
        isinstance(e, h2.events.StreamReset | h2.events.ConnectionTerminated) for e in events
    )
    await peer.close()


async def test_headers_again_on_a_half_closed_stream_is_stream_closed(harness: Harness) -> None:
    """Trailers after END_STREAM must not start the handler a second time (RFC 9113 5.1)."""
    raw = await harness.raw(settings={})
    request = raw.request(1, AUTH_CHECK, check_request().SerializeToString())
    # encoded after the request: the HPACK dynamic table follows the wire order
    trailers = frame(HEADERS, END_HEADERS | END_STREAM, 1, raw.block([("x-late", "1")]))
    raw.send(request, trailers)
    response = await raw.response(1)
    assert response.reset_code == STREAM_CLOSED
    await raw.ping()
    assert harness.auth.calls <= 1
    raw.send(raw.request(3, AUTH_CHECK, check_request().SerializeToString()))
    assert (await raw.response(3)).trailers["grpc-status"] == "0"
    assert harness.auth.calls <= 2
    await raw.close()


async def test_data_after_end_stream_resets_and_cancels(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    raw.send(raw.request(1, AUTH_CHECK, check_request("wait").SerializeToString()))
    await until(harness.auth.started)
    raw.send(frame(DATA, 0, 1, b"late"))
    assert (await raw.response(1)).reset_code == STREAM_CLOSED
    await until(harness.auth.cancelled)
    assert harness.open_streams() == 0
    await raw.close()


# ---------------------------------------------------------------------- raw HTTP/2: header blocks


def _hpack_string(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 127
    return bytes((len(raw),)) + raw


def _plain_block(headers: list[tuple[str, str]]) -> bytes:
    """Literals without indexing only: a block that leaves the dynamic table alone."""
    return b"".join(b"\x00" + _hpack_string(k) + _hpack_string(v) for k, v in headers)


_GRPC_PLAIN = _plain_block(grpc_request_headers(AUTH_CHECK))
_INDEXED_62 = b"\xbe"  # the most recent dynamic table entry


def _adding(value: str) -> bytes:
    """Inserts ("x-k", value) into the dynamic table (literal with incremental indexing)."""
    return _GRPC_PLAIN + b"\x40" + _hpack_string("x-k") + _hpack_string(value)


async def _seen_x_k(harness: Harness, raw: RawH2, stream_id: int, block: bytes) -> str:
    message = grpc_message(check_request().SerializeToString())
    raw.send(
        frame(HEADERS, END_HEADERS, stream_id, block), frame(DATA, END_STREAM, stream_id, message)
    )
    assert (await raw.response(stream_id)).trailers["grpc-status"] == "0"
    return harness.auth.metadata["x-k"]


async def test_repeated_header_blocks_follow_the_dynamic_table(harness: Harness) -> None:
    """The same bytes mean other headers once the table changed: no stale decoding."""
    raw = await harness.raw(settings={})
    referring = _GRPC_PLAIN + _INDEXED_62
    assert await _seen_x_k(harness, raw, 1, _adding("one")) == "one"
    assert await _seen_x_k(harness, raw, 3, referring) == "one"
    assert await _seen_x_k(harness, raw, 5, referring) == "one"  # the same block again
    assert await _seen_x_k(harness, raw, 7, _adding("two")) == "two"
    assert await _seen_x_k(harness, raw, 9, referring) == "two"
    assert await _seen_x_k(harness, raw, 11, referring) == "two"


async def test_header_block_after_a_table_size_update_eviction(harness: Harness) -> None:
    """A size update to 0 and back empties the table without an insertion: a block that
    referred to an evicted entry is then a decoding error, as a fresh decoder says."""
    raw = await harness.raw(settings={})
    referring = _GRPC_PLAIN + _INDEXED_62
    assert await _seen_x_k(harness, raw, 1, _adding("one")) == "one"
    assert await _seen_x_k(harness, raw, 3, referring) == "one"
    message = grpc_message(check_request().SerializeToString())
    raw.send(
        frame(HEADERS, END_HEADERS, 5, b"\x20\x3f\xe1\x1f" + _GRPC_PLAIN),
        frame(DATA, END_STREAM, 5, message),
    )
    assert (await raw.response(5)).trailers["grpc-status"] == "0"
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 7, referring))
    assert goaway_code(await raw.goaway()) == COMPRESSION_ERROR


async def test_header_block_split_over_continuation_frames(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    block = raw.block(grpc_request_headers(AUTH_CHECK, extra=[("x-pad", "p" * 300)]))
    third = len(block) // 3
    raw.send(
        frame(HEADERS, 0, 1, block[:third]),
        frame(CONTINUATION, 0, 1, block[third : 2 * third]),
        frame(CONTINUATION, END_HEADERS, 1, block[2 * third :]),
        frame(DATA, END_STREAM, 1, grpc_message(check_request(path="/cont").SerializeToString())),
    )
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    assert ok_headers(auth_pb2.CheckResponse.FromString(response.messages[0]))["x-path"] == "/cont"
    assert harness.auth.metadata["x-pad"] == "p" * 300
    await raw.close()


async def test_continuation_on_another_stream_is_an_error(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    block = raw.block(grpc_request_headers(AUTH_CHECK))
    raw.send(frame(HEADERS, 0, 1, block[:4]), frame(CONTINUATION, END_HEADERS, 3, block[4:]))
    assert goaway_code(await raw.goaway()) == PROTOCOL_ERROR


async def test_padded_headers_and_data(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    block = raw.block(grpc_request_headers(AUTH_CHECK))
    message = grpc_message(check_request(path="/padded", body="body").SerializeToString())
    raw.send(
        frame(HEADERS, END_HEADERS | PADDED, 1, bytes((7,)) + block + b"\x00" * 7),
        frame(DATA, PADDED, 1, bytes((200,)) + message[:10] + b"\x00" * 200),
        frame(DATA, PADDED, 1, bytes((0,)) + message[10:20]),
        frame(DATA, PADDED | END_STREAM, 1, bytes((3,)) + message[20:] + b"\x00" * 3),
    )
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    reply = auth_pb2.CheckResponse.FromString(response.messages[0])
    assert ok_headers(reply)["x-path"] == "/padded"
    assert ok_headers(reply)["x-body-sha256"] == hashlib.sha256(b"body").hexdigest()
    await raw.close()


@pytest.mark.parametrize(
    "bad",
    [
        frame(DATA, PADDED | END_STREAM, 1, bytes((5,)) + b"\x00" * 4),
        frame(DATA, PADDED | END_STREAM, 1, b""),
        frame(HEADERS, END_HEADERS | PADDED | END_STREAM, 3, bytes((9,)) + b"\x82"),
        frame(HEADERS, END_HEADERS | PRIORITY_FLAG | END_STREAM, 3, b"\x00\x00"),
    ],
    ids=["data-pad-longer-than-frame", "data-pad-missing", "headers-pad-too-long", "short-prio"],
)
async def test_bad_padding_is_a_protocol_error(harness: Harness, bad: bytes) -> None:
    raw = await harness.raw(settings={})
    raw.send(raw.headers(1, grpc_request_headers(AUTH_CHECK)), bad)
    assert goaway_code(await raw.goaway()) == PROTOCOL_ERROR


async def test_headers_with_priority_flag_and_priority_frames(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    block = raw.block(grpc_request_headers(AUTH_CHECK))
    priority = struct.pack(">IB", 0x80000000 | 0, 200)  # exclusive on stream 0, weight 201
    message = grpc_message(check_request(path="/prio").SerializeToString())
    raw.send(
        frame(PRIORITY, 0, 9, struct.pack(">IB", 0, 15)),  # PRIORITY for an idle stream
        frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, priority + block),
        frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15)),
        frame(DATA, END_STREAM, 1, message),
        frame(
            HEADERS,
            END_HEADERS | PRIORITY_FLAG | PADDED | END_STREAM,
            11,
            bytes((2,)) + priority + raw.block(grpc_request_headers(AUTH_CHECK)) + b"\x00\x00",
        ),
    )
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    assert ok_headers(auth_pb2.CheckResponse.FromString(response.messages[0]))["x-path"] == "/prio"
    # stream 11 carried no message: its headers were understood, and it gets a gRPC status
    assert (await raw.response(11)).trailers["grpc-status"] == INTERNAL
    await raw.close()


# --------------------------------------------------------------------- raw HTTP/2: gRPC framing


async def _trailers_only(raw: RawH2, stream_id: int) -> dict[str, str]:
    """A trailers-only answer: one HEADERS with END_STREAM, :status 200 and a grpc-status."""
    response = await raw.response(stream_id)
    assert len(response.frames) == 1, response.frames
    headers = response.trailers
    assert headers[":status"] == "200"
    assert headers["content-type"] == "application/grpc"
    # the client had ended its side: nothing more may be sent on the closed stream (RFC 9113 5.1)
    after = await raw.ping()
    assert not [r for r in after if r.frame.stream_id == stream_id], after
    return headers


@pytest.mark.parametrize(
    ("method", "content_type"),
    [("GET", "application/grpc"), ("PUT", "application/grpc"), ("POST", "application/json")],
)
async def test_not_a_grpc_post_is_internal(
    harness: Harness, method: str, content_type: str
) -> None:
    raw = await harness.raw(settings={})
    headers = grpc_request_headers(AUTH_CHECK, method=method, content_type=content_type)
    raw.send(raw.headers(1, headers, end_stream=True))
    trailers = await _trailers_only(raw, 1)
    assert trailers["grpc-status"] == INTERNAL
    assert harness.auth.calls == 0
    await raw.close()


async def test_grpc_content_type_with_a_suffix_is_accepted(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    headers = grpc_request_headers(AUTH_CHECK, content_type="application/grpc+proto")
    message = grpc_message(check_request(path="/proto").SerializeToString())
    raw.send(raw.headers(1, headers), frame(DATA, END_STREAM, 1, message))
    assert (await raw.response(1)).trailers["grpc-status"] == "0"
    await raw.close()


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (grpc_message(b"\x0a\x00", compressed=True), "compressed messages are not accepted"),
        (b"", "a unary call carries exactly one message"),
        (grpc_message(b"") + grpc_message(b""), "a unary call carries exactly one message"),
        (grpc_message(b"x" * 100)[:50], "truncated message"),
        (grpc_message(b"\xff\xff\xff"), "could not parse the request message"),
    ],
    ids=["compressed", "zero-messages", "two-messages", "truncated", "unparsable"],
)
async def test_bad_unary_request_body_is_internal(
    harness: Harness, body: bytes, details: str
) -> None:
    raw = await harness.raw(settings={})
    raw.send(raw.headers(1, grpc_request_headers(AUTH_CHECK)), frame(DATA, END_STREAM, 1, body))
    trailers = await _trailers_only(raw, 1)
    assert trailers["grpc-status"] == INTERNAL
    assert trailers["grpc-message"] == details
    assert harness.auth.calls == 0
    assert harness.open_streams() == 0
    await raw.close()


async def test_compressed_message_on_a_bidi_stream_cancels_the_handler(harness: Harness) -> None:
    """The server ends the call; the handler still waiting in it must not be left running."""
    raw = await harness.raw(settings={})
    first = grpc_message(proc_request(1, "wait").SerializeToString())
    raw.send(raw.headers(1, grpc_request_headers(PROCESS)), frame(DATA, 0, 1, first))
    await until(harness.proc.started)
    raw.send(frame(DATA, 0, 1, grpc_message(b"\x00", compressed=True)))
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == INTERNAL
    assert response.trailers["grpc-message"] == "compressed messages are not accepted"
    await until(harness.proc.cancelled)
    assert harness.open_streams() == 0
    await raw.close()


# ---------------------------------------------------------------------- h2: flow control, frames


def _window_settings(initial_window: int, max_frame: int = 16_384) -> dict[int, int]:
    return {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
        h2.settings.SettingCodes.MAX_FRAME_SIZE: max_frame,
    }


def _ended(stream_id: int) -> Callable[[h2.events.Event], bool]:
    return lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id


def _big_check(size: int) -> bytes:
    return bytes(check_request("big", x_size=str(size)).SerializeToString())


def _trailers(events: list[h2.events.Event]) -> tuple[int, dict[str, str]]:
    """Where the trailers are among the events, and what they say (h2 gives str headers here:
    the peer is configured with header_encoding)."""
    for index, event in enumerate(events):
        if isinstance(event, h2.events.TrailersReceived):
            return index, cast(dict[str, str], dict(event.headers or ()))
    raise AssertionError(f"no trailers in {events}")


def _assert_big_reply(data: bytes, size: int) -> None:
    (message,) = split_messages(data)
    assert auth_pb2.CheckResponse.FromString(message).denied_response.body == "x" * size


async def test_tiny_stream_window_holds_data_until_window_update(harness: Harness) -> None:
    peer = await harness.peer(settings=_window_settings(100))
    stream_id = await peer.start_unary(AUTH_CHECK, _big_check(1000))
    # h2 raises FlowControlError if the server sends beyond the 100-byte window
    events = await peer.events_until(lambda e: isinstance(e, h2.events.DataReceived))
    held = await peer.ping()
    events += held
    assert sum(e.flow_controlled_length for e in data_events(events, stream_id)) == 100
    assert not any(isinstance(e, h2.events.TrailersReceived | h2.events.StreamEnded) for e in held)

    while not any(isinstance(e, h2.events.StreamEnded) for e in events):
        peer.conn.increment_flow_control_window(100, stream_id=stream_id)
        await peer.flush()
        events += await peer.ping()
    data = data_events(events, stream_id)
    trailers_at, trailers = _trailers(events)
    assert events.index(data[-1]) < trailers_at  # trailers only after all DATA
    assert trailers["grpc-status"] == "0"
    assert max(e.flow_controlled_length for e in data) <= 100
    _assert_big_reply(b"".join(e.data for e in data), 1000)
    assert harness.open_streams() == 0
    await peer.close()


async def test_connection_window_holds_data_until_window_update(harness: Harness) -> None:
    size = 200_000
    peer = await harness.peer(settings=_window_settings(1 << 20))
    stream_id = await peer.start_unary(AUTH_CHECK, _big_check(size))
    events: list[h2.events.Event] = []
    while sum(e.flow_controlled_length for e in data_events(events, stream_id)) < 65_535:
        event = await peer.next_event()
        assert event is not None
        events.append(event)
    events += await peer.ping()
    assert sum(e.flow_controlled_length for e in data_events(events, stream_id)) == 65_535
    assert not any(isinstance(e, h2.events.StreamEnded) for e in events)
    peer.conn.increment_flow_control_window(1 << 20)
    await peer.flush()
    events += await peer.events_until(_ended(stream_id))
    data = b"".join(e.data for e in data_events(events, stream_id))
    _assert_big_reply(data, size)
    sizes = [len(f.data) for f in peer.frames if isinstance(f, DataFrame)]
    assert max(sizes) == 16_384  # the default SETTINGS_MAX_FRAME_SIZE, used but not exceeded
    await peer.close()


async def test_settings_initial_window_change_releases_held_data(harness: Harness) -> None:
    peer = await harness.peer(settings=_window_settings(100))
    stream_id = await peer.start_unary(AUTH_CHECK, _big_check(5000))
    events = await peer.events_until(lambda e: isinstance(e, h2.events.DataReceived))
    events += await peer.ping()
    assert sum(e.flow_controlled_length for e in data_events(events, stream_id)) == 100
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 16})
    await peer.flush()
    events += await peer.events_until(_ended(stream_id))
    _assert_big_reply(b"".join(e.data for e in data_events(events, stream_id)), 5000)
    await peer.close()


async def test_peer_max_frame_size_is_respected(harness: Harness) -> None:
    size = 300_000
    peer = await harness.peer(settings=_window_settings(1 << 20, 20_000))
    peer.conn.increment_flow_control_window(1 << 20)
    stream_id = await peer.start_unary(AUTH_CHECK, _big_check(size))
    events = await peer.events_until(_ended(stream_id))
    _assert_big_reply(b"".join(e.data for e in data_events(events, stream_id)), size)
    sizes = [len(f.data) for f in peer.frames if isinstance(f, DataFrame)]
    assert len(sizes) > 1
    assert max(sizes) == 20_000  # larger than the default, never above what the peer allows
    await peer.close()


async def test_request_streaming_gets_window_updates(harness: Harness) -> None:
    """12 MB up one stream, never beyond the windows the server grants: it must grant more."""
    peer = await harness.peer()
    stream_id = peer.conn.get_next_available_stream_id()
    peer.conn.send_headers(stream_id, grpc_request_headers(COUNT))
    await peer.flush()
    message = grpc_message(b"m" * (1 << 20))
    outgoing = message * 12
    sent = 0
    while sent < len(outgoing):
        window = min(
            peer.conn.local_flow_control_window(stream_id), peer.conn.max_outbound_frame_size
        )
        if window <= 0:
            await peer.events_until(lambda e: isinstance(e, h2.events.WindowUpdated))
            continue
        chunk = outgoing[sent : sent + window]
        sent += len(chunk)
        peer.conn.send_data(stream_id, chunk, end_stream=sent == len(outgoing))
        await peer.flush()
    events = await peer.events_until(_ended(stream_id))
    data = b"".join(e.data for e in data_events(events, stream_id))
    assert split_messages(data) == [f"12 {12 << 20}".encode()]
    await peer.close()


@pytest.mark.parametrize("where", ["connection", "stream", "settings", "settings-delta"])
async def test_flow_control_window_overflow(harness: Harness, where: str) -> None:
    """Windows the peer grants us may not pass 2^31-1 (RFC 9113 6.9.1, 6.9.2).

    (The other FLOW_CONTROL_ERROR, a peer sending more than we granted: see
    test_queued_messages_withhold_stream_credit.)
    """
    raw = await harness.raw(settings={})
    if where == "connection":
        raw.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)))
        assert goaway_code(await raw.goaway()) == FLOW_CONTROL_ERROR
    elif where == "stream":
        raw.send(raw.request(1, AUTH_CHECK, check_request("wait").SerializeToString()))
        await until(harness.auth.started)
        raw.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1)))
        assert (await raw.response(1)).reset_code == FLOW_CONTROL_ERROR
        await until(harness.auth.cancelled)
        assert harness.open_streams() == 0
    elif where == "settings":
        raw.send(frame(SETTINGS, 0, 0, settings_payload({S_INITIAL_WINDOW_SIZE: 2**31})))
        assert goaway_code(await raw.goaway()) == FLOW_CONTROL_ERROR
    else:  # a larger initial window pushes an open stream's window past the maximum
        raw.send(raw.request(1, AUTH_CHECK, check_request("wait").SerializeToString()))
        await until(harness.auth.started)
        raw.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1 - 65_535)))
        assert not [r for r in await raw.ping() if r.frame.stream_id == 1]  # exactly the max
        raw.send(frame(SETTINGS, 0, 0, settings_payload({S_INITIAL_WINDOW_SIZE: 65_536})))
        assert goaway_code(await raw.goaway()) == FLOW_CONTROL_ERROR
        await until(harness.auth.cancelled)
    await _still_serving(harness)


async def test_bidi_error_after_a_blocked_write_keeps_the_message_whole(harness: Harness) -> None:
    """A message half-sent (window closed) is finished before the error status, never cut."""
    peer = await harness.peer(settings=_window_settings(100))
    stream_id = peer.conn.get_next_available_stream_id()
    peer.conn.send_headers(stream_id, grpc_request_headers(PROCESS))
    request = proc_request(1, "big-then-raise", size=1000).SerializeToString()
    peer.conn.send_data(stream_id, grpc_message(request))
    await peer.flush()
    events = await peer.events_until(lambda e: isinstance(e, h2.events.DataReceived))
    events += await peer.ping()
    assert not any(isinstance(e, h2.events.StreamEnded) for e in events)
    peer.conn.increment_flow_control_window(1 << 16, stream_id=stream_id)
    await peer.flush()
    events += await peer.events_until(_ended(stream_id))
    (message,) = split_messages(b"".join(e.data for e in data_events(events, stream_id)))
    response = proc_pb2.ProcessingResponse.FromString(message)
    assert response.request_body.response.body_mutation.body == b"b" * 1000
    assert _trailers(events)[1]["grpc-status"] == INTERNAL
    await peer.close()


# --------------------------------------------------------------------------------- lifecycle


async def test_stop_with_grace_lets_the_open_call_finish(harness: Harness) -> None:
    idle = await harness.raw(settings={})
    await idle.ping()
    raw = await harness.raw(settings={})
    raw.send(raw.request(1, AUTH_CHECK, check_request("wait", path="/slow").SerializeToString()))
    await until(harness.auth.started)
    stopping = asyncio.create_task(harness.server.stop(GUARD))
    idle_goaway = await idle.goaway()  # a connection without calls is closed at once
    assert goaway_code(idle_goaway) == NO_ERROR
    assert idle_goaway.last_stream_id == 0
    goaway = (await raw.read_until(lambda r: isinstance(r.frame, GoAwayFrame)))[-1].frame
    assert isinstance(goaway, GoAwayFrame)
    assert goaway_code(goaway) == NO_ERROR
    assert goaway.last_stream_id == 1
    raw.send(raw.request(3, AUTH_CHECK, check_request().SerializeToString()))
    assert (await raw.response(3)).reset_code == REFUSED_STREAM
    assert not stopping.done()
    assert await harness.server.wait_for_termination(timeout=0) is True  # timed out

    harness.auth.release.set()
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    assert ok_headers(auth_pb2.CheckResponse.FromString(response.messages[0]))["x-path"] == "/slow"
    await raw.read_to_eof()
    await asyncio.wait_for(stopping, GUARD)
    assert await harness.server.wait_for_termination(timeout=0) is False  # terminated
    assert not harness.auth.cancelled.is_set()
    with pytest.raises(ConnectionRefusedError):
        await RawH2.open(harness.address)


async def test_call_still_running_after_grace_is_cancelled(
    harness: Harness, channel: grpc.aio.Channel
) -> None:
    call = auth_grpc.AuthorizationStub(channel).Check(check_request("wait"))
    await until(harness.auth.started)
    await harness.server.stop(0.05)
    await until(harness.auth.cancelled)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert harness.server.connections == set()


async def test_peer_gone_mid_call_cancels_the_handler(harness: Harness) -> None:
    raw = await harness.raw(settings={})
    raw.send(raw.request(1, AUTH_CHECK, check_request("wait").SerializeToString()))
    await until(harness.auth.started)
    raw.writer.transport.abort()  # no GOAWAY, no RST_STREAM: the socket just goes
    await until(harness.auth.cancelled)
    await asyncio.wait_for(harness.server.drained.wait(), GUARD)
    assert harness.server.connections == set()
    await _still_serving(harness)


async def test_wait_for_termination_returns_after_stop(harness: Harness) -> None:
    """As grpc.aio's: the result says whether the wait timed out."""
    waiting = asyncio.create_task(harness.server.wait_for_termination())
    assert await harness.server.wait_for_termination(timeout=0) is True
    assert await harness.server.wait_for_termination(timeout=0.01) is True
    assert not waiting.done()
    await harness.server.stop(None)
    assert await asyncio.wait_for(waiting, GUARD) is False
    assert await harness.server.wait_for_termination(timeout=0) is False
    assert await harness.server.wait_for_termination() is False


# -------------------------------------------------------------------------------- properties

_STREAM_IDS = st.sampled_from([0, 1, 2, 3, 5, 7, 0x7FFFFFFF, 0x80000001])
# one block of literals only, one that inserts into the dynamic table (hpack's own encoder)
_BLOCKS = st.sampled_from([_GRPC_PLAIN, Encoder().encode(grpc_request_headers(AUTH_CHECK))])
_MESSAGES = st.sampled_from(
    [grpc_message(check_request().SerializeToString()), grpc_message(b""), b"\x00\x00"]
)


def _any_frame() -> st.SearchStrategy[bytes]:
    """Well-formed requests (so calls start), random frames and plain garbage, mixed."""
    headers = st.builds(
        lambda sid, flags, block: frame(HEADERS, flags, sid, block),
        _STREAM_IDS,
        st.sampled_from([END_HEADERS, END_HEADERS | END_STREAM, 0]),
        _BLOCKS,
    )
    data = st.builds(
        lambda sid, end, message: frame(DATA, END_STREAM if end else 0, sid, message),
        _STREAM_IDS,
        st.booleans(),
        _MESSAGES,
    )
    random_frame = st.builds(
        frame,
        st.integers(min_value=0, max_value=12),
        st.integers(min_value=0, max_value=255),
        _STREAM_IDS,
        st.binary(max_size=40),
    )
    return st.one_of(headers, data, random_frame, st.binary(min_size=1, max_size=30))


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What asyncio reports through its exception handler, e.g. data_received raising."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


async def _send_and_hang_up(harness: Harness, garbage: bytes) -> None:
    """Preface, the bytes, EOF; then read until the server closes (it must not hang)."""
    reader, writer = await asyncio.open_connection(*harness.address)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + garbage)
    await writer.drain()
    writer.write_eof()
    while await asyncio.wait_for(reader.read(65_536), GUARD):
        pass
    writer.close()
    await writer.wait_closed()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunks=st.lists(_any_frame(), max_size=12))
async def test_random_frames_never_break_the_server(
    harness: Harness, loop_errors: list[dict[str, Any]], chunks: list[bytes]
) -> None:
    await _send_and_hang_up(harness, b"".join(chunks))
    await asyncio.wait_for(harness.server.drained.wait(), GUARD)
    assert loop_errors == []  # nothing raised out of the protocol
    assert harness.open_streams() == 0
    await _still_serving(harness)


@pytest.mark.parametrize(
    "garbage",
    [
        frame(HEADERS, END_HEADERS, 1, _GRPC_PLAIN) + frame(RST_STREAM, 0, 1, b"\x00"),
        frame(DATA, END_STREAM, 0x7FFFFFFF, b"\x00\x00"),
        frame(WINDOW_UPDATE, 0, 0x7FFFFFFF, b"\x7f\xff\xff\xff") * 3,
        frame(HEADERS, END_HEADERS, 1, _GRPC_PLAIN) + frame(DATA, 0, 1, b"\x00\x00\x00"),
    ],
    ids=["short-rst-stream", "data-high-idle-stream", "window-updates-idle", "partial-message"],
)
async def test_hostile_bytes_then_a_fresh_connection_is_served(
    harness: Harness, loop_errors: list[dict[str, Any]], garbage: bytes
) -> None:
    await _send_and_hang_up(harness, garbage)
    await _still_serving(harness)
    assert loop_errors == []


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=8))
async def test_any_split_of_a_request_gives_the_same_answer(
    harness: Harness, cuts: list[int]
) -> None:
    raw = await harness.raw(settings={})
    wire = raw.request(
        1, AUTH_CHECK, check_request(path="/split", body="b" * 200).SerializeToString()
    )
    points = sorted({c % len(wire) for c in cuts} | {0, len(wire)})
    for start, stop in itertools.pairwise(points):
        raw.send(wire[start:stop])
        await raw.drain()
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    assert ok_headers(auth_pb2.CheckResponse.FromString(response.messages[0]))["x-path"] == "/split"
    await raw.close()


# ----------------------------------------------------------------- receive-side backpressure


async def test_queued_messages_withhold_stream_credit(
    make_harness: Callable[..., Awaitable[Harness]],
) -> None:
    """While the handler is busy, complete messages queue up without earning credit: a peer that
    keeps sending past the stream window is a FLOW_CONTROL_ERROR, and the handler is cancelled
    (without backpressure the server kept granting credit and queueing without bound)."""
    harness = await make_harness(max_message_bytes=2 << 20)
    raw = await harness.raw(settings={})
    raw.send(raw.headers(1, grpc_request_headers(PROCESS)))
    raw.send(frame(DATA, 0, 1, grpc_message(proc_request(0, "wait").SerializeToString())))
    await until(harness.proc.started)
    for seq in range(1, 10):  # 9 MB of complete messages > the 8 MiB stream window
        raw.send(frame(DATA, 0, 1, grpc_message(big_proc_request(seq, 1_000_000))))
    assert (await raw.response(1)).reset_code == FLOW_CONTROL_ERROR
    await until(harness.proc.cancelled)
    assert harness.open_streams() == 0
    await _still_serving(harness)


async def test_credit_returns_once_the_handler_takes_the_messages(harness: Harness) -> None:
    """The well-behaved side of it: credit is withheld while messages wait, and granted as soon
    as the handler has taken them."""
    raw = await harness.raw(settings={})
    raw.send(raw.headers(1, grpc_request_headers(PROCESS)))
    raw.send(frame(DATA, 0, 1, grpc_message(proc_request(0, "wait").SerializeToString())))
    await until(harness.proc.started)
    for seq in range(1, 6):  # 5 MB: past half the stream window, within all of it
        raw.send(frame(DATA, 0, 1, grpc_message(big_proc_request(seq, 1_000_000))))
    received = await raw.ping()
    assert not [r for r in received if r.frame.stream_id == 1 and r.frame.type == WINDOW_UPDATE], (
        "credit granted while the messages were still queued"
    )
    harness.proc.release.set()
    frames = await raw.read_until(
        lambda r: r.frame.type == WINDOW_UPDATE and r.frame.stream_id == 1
    )
    credit = frames[-1].frame
    assert isinstance(credit, WindowUpdateFrame)
    assert credit.window_increment >= 4 << 20
    raw.send(frame(DATA, END_STREAM, 1, b""))
    response = await raw.response(1)
    assert response.trailers["grpc-status"] == "0"
    last = proc_pb2.ProcessingResponse.FromString(response.messages[-1])
    assert seq_of(last) == "5"  # every queued message was answered, in order


def big_proc_request(seq: int, size: int) -> bytes:
    request = proc_request(seq)
    request.request_headers.headers.headers.add(key="x-pad", raw_value=b"p" * size)
    return bytes(request.SerializeToString())


# ----------------------------------------------------------------------- grpc.aio parity


async def test_trailers_after_our_reset_are_ignored(harness: Harness) -> None:
    """A client's trailers for a stream the server already reset (they crossed on the wire) are
    ignored, not a connection error."""
    raw = await harness.raw(settings={})
    raw.send(raw.headers(1, grpc_request_headers(PROCESS)))
    raw.send(frame(DATA, 0, 1, grpc_message(b"\x01" + b"\x00" * 3, compressed=True)))
    response = await raw.response(1)  # compressed: INTERNAL, then RST_STREAM (client still open)
    assert response.trailers["grpc-status"] == INTERNAL
    raw.send(raw.headers(1, [("grpc-status", "0")], end_stream=True))
    await _still_serving(harness)
    assert not [r for r in await raw.ping() if r.frame.type == GOAWAY]


async def test_sync_handlers_and_peer_spelling(
    make_harness: Callable[..., Awaitable[Harness]],
) -> None:
    """Non-async handlers (grpc_health's base List is one) answer; peer() reads as grpc.aio's."""
    harness = await make_harness()
    seen: list[str] = []

    def sync_echo(request: bytes, context: Any) -> bytes:
        seen.append(context.peer())
        return request[::-1]

    harness.server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Sync", {"Echo": grpc.unary_unary_rpc_method_handler(sync_echo)}
            ),
        )
    )
    async with grpc.aio.insecure_channel(harness.target) as chan:
        assert await chan.unary_unary("/test.Sync/Echo")(b"abc") == b"cba"
    assert len(seen) == 1
    assert seen[0].startswith("ipv4:127.0.0.1:")
