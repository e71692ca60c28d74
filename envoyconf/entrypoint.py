"""``python -m envoyconf render --out FILE``: the Envoy configuration a pod runs, rendered at pod
start from the ``ENVOY_*`` / ``CORS_*`` variables (the ``playback-envoy`` ConfigMap, through
``envFrom``) by the init container of k8s/base/edge.yaml.

A bad or unknown setting prints one line per problem, each naming its key, and exits 2: the pod
stops at ``Init:Error`` with those lines as the container's termination message, before Envoy
serves anything. Nothing is written then; on success the file is replaced atomically, after the
SDS files it reads the TLS certificates through (``sds-*.yaml``, written beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from envoyconf.bootstrap import render
from envoyconf.environment import SettingsError, settings_from_env
from envoyconf.sds import render_sds
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
    # The certificates come through SDS files (envoyconf.sds), rendered next to the configuration.
    settings = dataclasses.replace(settings, sds_dir=str(out.parent))
    text = render(settings)
    files = {Path(path): sds_text for path, sds_text in render_sds(settings).items()}
    files[out] = text  # last: Envoy's configuration names the others
    try:
        for path, content in files.items():
            partial = path.with_name(f".{path.name}.partial")
            partial.write_text(content)
            partial.replace(path)
    except OSError as exc:
        print(f"envoy settings: cannot write {out}: {exc.strerror}", file=err)
        return EXIT_WRITE
    print(f"envoy settings: rendered {out}: {_summary(settings)}", file=err)
    return EXIT_OK
