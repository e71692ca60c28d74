"""The ``playback-drm`` command: development tooling, not installed in the production image.

    playback-drm up                      start the local stack (what `make run` runs)
    playback-drm token --sub alice       print a development JWT
    playback-drm events [--follow]       print recorded events, one CloudEvent per line
    playback-drm serve EMULATOR          run an emulator (auth, billing, DRM), the origin or site
    playback-drm envoy-config --profile local|k8s [--out FILE]    (reads the ENVOY_* and CORS_*
                                         settings, as a pod does; --all renders envoy/ from the
                                         defaults)
    playback-drm check-config [--validate] FILE|-   check the Envoy settings of a rendered
                                         overlay (`kubectl kustomize k8s/overlays/prod | ... -`)

The services themselves start with ``python -m authz|extproc|license_broker`` (the local stack
does the same). This module reads ``os.environ`` for the commands it runs and hands the mapping on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from playback_drm.logs import LoggingConfig, configure_logging
from playback_drm.runtime import run_until_signalled
from playback_drm.settings import ConfigError, env_addr

DEFAULT_ROOT = Path(".local")


async def _run_app(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _serve_auth_emulator(env: Mapping[str, str]) -> None:
    from devstack.emulators.auth import AuthEmulator, load_or_create_key

    emulator = AuthEmulator(issuer=env.get("JWT_ISSUER") or AuthEmulator.issuer)
    key_file = env.get("JWT_SIGNING_KEY_FILE")
    if key_file:
        emulator.keys.append(load_or_create_key(Path(key_file)))
    await _run_app(emulator.build_app(), *env_addr(env, "AUTH_EMULATOR_ADDR", "127.0.0.1:9101"))


async def _serve_billing_emulator(env: Mapping[str, str]) -> None:
    from devstack.emulators.billing import BillingEmulator

    origin = (env.get("ORIGIN_URL") or "").rstrip("/") or None
    state = env.get("BILLING_STATE_FILE")
    emulator = BillingEmulator(origin_url=origin, state_file=Path(state) if state else None)
    emulator.load()
    await _run_app(
        emulator.build_app(),
        *env_addr(env, "BILLING_EMULATOR_ADDR", "127.0.0.1:9102"),
    )


def _token_issuer(env: Mapping[str, str]) -> Callable[[str, int], str] | None:
    """Development JWTs for the demo pages, signed with the auth emulator's key."""
    from devstack.emulators.auth import DEFAULT_ISSUER, load_or_create_key, sign_token

    key_file = env.get("JWT_SIGNING_KEY_FILE")
    if not key_file:
        return None
    key = load_or_create_key(Path(key_file))
    issuer = env.get("JWT_ISSUER") or DEFAULT_ISSUER

    def issue(sub: str, ttl: int) -> str:
        return sign_token(key, sub, issuer=issuer, ttl=ttl)

    return issue


async def _serve_origin(env: Mapping[str, str]) -> None:
    from devstack.emulators.origin import OriginSettings, build_app
    from devstack.live import LiveSettings

    settings = OriginSettings(
        media_dir=Path(env.get("ORIGIN_DIR") or ".local/media/origin"),
        live=LiveSettings.from_env(env),
        node_modules=Path(env["NODE_MODULES_DIR"]) if env.get("NODE_MODULES_DIR") else None,
        events_log=Path(env["EVENTS_LOG_PATH"]) if env.get("EVENTS_LOG_PATH") else None,
        issue_token=_token_issuer(env),
    )
    await _run_app(build_app(settings), *env_addr(env, "ORIGIN_ADDR", "127.0.0.1:9104"))


async def _serve_site(env: Mapping[str, str]) -> None:
    from devstack.emulators.site import SiteSettings, build_app

    settings = SiteSettings(
        gateway=env.get("SITE_GATEWAY_URL") or "http://127.0.0.1:8080",
        node_modules=Path(env["NODE_MODULES_DIR"]) if env.get("NODE_MODULES_DIR") else None,
        events_log=Path(env["EVENTS_LOG_PATH"]) if env.get("EVENTS_LOG_PATH") else None,
        issue_token=_token_issuer(env),
    )
    await _run_app(build_app(settings), *env_addr(env, "SITE_ADDR", "127.0.0.1:8099"))


async def _serve_drm_emulator(env: Mapping[str, str]) -> None:
    from devstack.emulators import drm

    await drm.serve_from_env(env)


EMULATORS: dict[str, Callable[[Mapping[str, str]], Coroutine[Any, Any, None]]] = {
    "auth-emulator": _serve_auth_emulator,
    "billing-emulator": _serve_billing_emulator,
    "drm-emulator": _serve_drm_emulator,
    "origin": _serve_origin,
    "site": _serve_site,
}


def cmd_serve(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    configure_logging(args.component, LoggingConfig.from_env(env).level)
    run_until_signalled(EMULATORS[args.component](env))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from devstack.emulators.auth import load_or_create_key, sign_token

    key = load_or_create_key(Path(args.root) / "secrets" / "jwt-signing.pem")
    print(sign_token(key, args.sub, ttl=args.ttl))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from playback_drm.events import EventsConfig, EventsUnavailable
    from playback_drm.events.reader import print_events

    env = dict(os.environ)
    env.setdefault("EVENTS_LOG_PATH", str(Path(args.root) / "events.jsonl"))
    config = EventsConfig.from_env(env)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(print_events(config, follow=args.follow, out=sys.stdout))
    except EventsUnavailable as exc:
        print(f"events unavailable: {exc.detail}", file=sys.stderr)
        return 1
    return 0


def cmd_envoy_config(args: argparse.Namespace) -> int:
    from envoyconf import RENDERED_FILES, render, settings_for, settings_from_env
    from envoyconf.environment import is_envoy_key

    env = dict(os.environ)
    if args.all:
        # the committed files are the profiles' defaults, whatever this shell sets
        ignored = sorted(name for name in env if is_envoy_key(name))
        if ignored:
            print(f"--all ignores {', '.join(ignored)}", file=sys.stderr)
        for path, profile in RENDERED_FILES.items():
            Path(path).write_text(render(settings_for(profile)))
            print(f"wrote {path}")
        return 0
    text = render(settings_from_env(env, settings_for(args.profile)))
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from devstack.checkconfig import main as check_config

    return check_config(args.source, validate=args.validate)


def cmd_up(args: argparse.Namespace) -> int:
    from devstack.stack import Stack, StackSettings

    env = dict(os.environ)
    stack = Stack(StackSettings.from_env(env, Path(args.root)))
    if not args.no_media:
        print("preparing demo media (first run generates it; later runs reuse it) ...", flush=True)
        stack.ensure_media()
    started = time.monotonic()
    try:
        stack.start()
    except RuntimeError as exc:
        stack.stop()
        print(f"\nstart-up failed: {exc}", file=sys.stderr)
        return 1
    print(_banner(stack, time.monotonic() - started), flush=True)
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop:
            time.sleep(0.5)
            for name, proc in stack.processes.items():
                if not proc.running:
                    print(f"{name} exited; see {proc.log_path}", file=sys.stderr)
                    stop = True
    except KeyboardInterrupt:
        pass
    print("\nstopping ...", flush=True)
    stack.stop()
    return 0


def _banner(stack: object, seconds: float) -> str:
    from devstack.stack import Stack

    assert isinstance(stack, Stack)
    gw = stack.gateway
    pki = stack.root / "pki"
    return f"""
playback-drm is ready in {seconds:.1f}s

  demo page      {gw}/demo/
  live channel   {gw}/demo/?video=live-demo   (URL_TOKEN_TTL=10 URL_TOKEN_PLAYLIST_TTL=20 to
                 watch it outlive its tokens)
  same, cross-origin  {stack.site}/demo/   (the platform's web site: CORS_ALLOWED_ORIGINS)
  gateway        {gw}            (plays the API gateway; forwards over mTLS)
  sidecar        {stack.sidecar}   (mutual TLS; what a pod exposes)
  envoy admin    http://127.0.0.1:{stack.ports.admin}/
  logs           {stack.logs}/
  events         {stack.events_log}   (`playback-drm events --follow`)

try:
  TOKEN=$(.venv/bin/playback-drm token --sub alice)
  curl -s "{gw}/playback/demo/manifest?token=$TOKEN"
  curl -s "{gw}/playback/demo/manifest?format=dash" -H "Authorization: Bearer $TOKEN"
  curl -s "{gw}/playback/demo-uhd/manifest?token=$(.venv/bin/playback-drm token --sub bob)"
  curl -s -X POST "{gw}/drm/license" -H "Authorization: Bearer $TOKEN" \\
       -H 'content-type: application/json' -d '{{"videoId":"demo","licenseRequest":"..."}}'
  curl -sk --cacert {pki}/ca.crt {stack.sidecar}/drm/license   # refused: no client cert

Ctrl-C stops every process.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playback-drm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local stack")
    up.add_argument("--root", default=str(DEFAULT_ROOT), help="working folder (git-ignored)")
    up.add_argument("--no-media", action="store_true", help="do not generate demo media")
    up.set_defaults(func=cmd_up)

    token = sub.add_parser("token", help="print a development JWT")
    token.add_argument("--sub", required=True)
    token.add_argument("--ttl", type=int, default=3600)
    token.add_argument("--root", default=str(DEFAULT_ROOT))
    token.set_defaults(func=cmd_token)

    events = sub.add_parser("events", help="print recorded events as JSON lines")
    events.add_argument("--follow", action="store_true")
    events.add_argument("--root", default=str(DEFAULT_ROOT))
    events.set_defaults(func=cmd_events)

    serve = sub.add_parser("serve", help="run one emulator or the demo origin")
    serve.add_argument("component", choices=sorted(EMULATORS))
    serve.set_defaults(func=cmd_serve)

    envoy = sub.add_parser("envoy-config", help="render an Envoy configuration")
    envoy.add_argument("--profile", choices=["local", "k8s"], default="k8s")
    envoy.add_argument("--out")
    envoy.add_argument("--all", action="store_true", help="rewrite every file under envoy/")
    envoy.set_defaults(func=cmd_envoy_config)

    check = sub.add_parser(
        "check-config",
        help="check the Envoy settings of a rendered overlay (what the pods check at start)",
    )
    check.add_argument("source", help="rendered manifests (kubectl kustomize ...), or - for stdin")
    check.add_argument(
        "--validate",
        action="store_true",
        help="also run envoy --mode validate on each rendered configuration (needs envoy)",
    )
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
