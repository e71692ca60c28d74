"""``python -m envoyconf render --out FILE``: the Envoy configuration a pod runs, rendered at pod
start from the ``ENVOY_*`` / ``CORS_*`` variables (the ``playback-envoy`` ConfigMap, through
``envFrom``) by the init container of k8s/base/edge.yaml.

A bad or unknown setting prints one line per problem, each naming its key, and exits 2: the pod
stops at ``Init:Error`` with those lines as the container's termination message, before Envoy
serves anything. Nothing is written then; on success the file is replaced atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from envoyconf.bootstrap import render
from envoyconf.environment import SettingsError, settings_from_env
from envoyconf.settings import EnvoySettings, settings_for

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_WRITE = 1


def render_settings(env: Mapping[str, str], profile: str = "k8s") -> tuple[EnvoySettings, str]:
    """The settings ``env`` asks for on top of ``profile``'s defaults, and their rendering."""
    settings = settings_from_env(env, settings_for(profile))
    return settings, render(settings)


def _summary(s: EnvoySettings) -> str:
    return (
        f"principals {','.join(s.license_principals)}; "
        f"peer CIDRs {','.join(s.license_peer_cidrs)}; "
        f"viewer CIDRs {','.join(s.license_client_cidrs)}; "
        f"CORS origins {','.join(s.cors.origins) or 'none'}"
    )


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stderr: TextIO | None = None,
) -> int:
    err = stderr if stderr is not None else sys.stderr
    parser = argparse.ArgumentParser(prog="python -m envoyconf", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("render", help="render the Envoy configuration from the environment")
    cmd.add_argument("--out", required=True, help="file to write (replaced atomically)")
    cmd.add_argument("--profile", choices=["k8s", "local"], default="k8s")
    args = parser.parse_args(argv)
    environ = dict(os.environ if env is None else env)
    try:
        settings, text = render_settings(environ, args.profile)
    except SettingsError as exc:
        print(f"envoy settings: {len(exc.problems)} problem(s), nothing rendered:", file=err)
        for problem in exc.problems:
            print(f"  {problem}", file=err)
        return EXIT_CONFIG
    out = Path(args.out)
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_text(text)
        partial.replace(out)
    except OSError as exc:
        print(f"envoy settings: cannot write {out}: {exc.strerror}", file=err)
        return EXIT_WRITE
    print(f"envoy settings: rendered {out}: {_summary(settings)}", file=err)
    return EXIT_OK
