#!/usr/bin/env bash
# Build a stand-in for the Dockerfile's PYTHON_IMAGE (python:3.11-slim-bookworm) from Debian's
# own packages, for machines that can reach Debian's archive but no container registry:
# a debootstrap `minbase` of bookworm (the release the official image is built on) with python3
# (3.11), python3-venv and python-is-python3, imported with `podman import` under the name the
# Dockerfile asks for. The official image stays the default wherever it can be pulled.
#
# Usage: scripts/debian-base-image.sh IMAGE_NAME
#   MIRROR   Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

IMAGE="${1:?usage: $0 IMAGE_NAME}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm

die() {
    echo "debian-base-image: ERROR: $*" >&2
    exit 1
}

command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (scripts/setup-podman.sh installs it)"
command -v podman >/dev/null 2>&1 || die "podman not found (scripts/setup-podman.sh installs it)"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"

work="$(mktemp -d /var/tmp/playback-drm-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

echo "debian-base-image: debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

# What a container base image does not need: package lists and caches, docs, man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
python3_version="$(chroot "$root" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"

tar --numeric-owner --xattrs -C "$root" -c . \
    | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "debootstrap $SUITE minbase + python3 $python3_version" \
        - "$IMAGE" >/dev/null
echo "debian-base-image: $IMAGE (Debian $SUITE, python $python3_version)," \
    "$(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec) uncompressed"
