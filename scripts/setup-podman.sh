#!/usr/bin/env bash
# Install Debian's daemonless container tools for `make images` and `make pods-test`: podman
# (kube play), buildah (podman build), netavark + aardvark-dns (a network of the test's own with
# DNS), debootstrap (the local base image when PYTHON_IMAGE cannot be pulled) and docker-registry
# (the CNCF Distribution registry the pods test pushes to and pulls from on loopback; its
# systemd service is not used). Idempotent; exits non-zero, loudly, when anything is missing
# afterwards or podman cannot start a container here.
set -euo pipefail

PACKAGES=(podman buildah runc crun conmon netavark aardvark-dns catatonit uidmap iptables
    debootstrap docker-registry)
COMMANDS=(podman buildah runc debootstrap docker-registry)

fail() {
    echo "setup-podman: ERROR: $*" >&2
    echo "setup-podman: \`make images\` and \`make pods-test\` (part of \`make test\`) need podman" >&2
    exit 1
}

missing=()
for c in "${COMMANDS[@]}"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
[ -x /usr/lib/podman/netavark ] || [ -x /usr/libexec/podman/netavark ] || missing+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || [ -x /usr/libexec/podman/aardvark-dns ] || missing+=(aardvark-dns)

if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 \
        || fail "apt-get not found: install Debian's ${PACKAGES[*]} by hand (missing: ${missing[*]})"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fail "not root and sudo is not available"
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "setup-podman: installing ${PACKAGES[*]} with apt-get (missing: ${missing[*]})"
    $SUDO apt-get update -q || fail "apt-get update failed"
    # policy-rc.d-less containers: the registry's own service is never started by us (no init
    # system); the tests run it on a loopback port with a configuration of their own.
    $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" \
        || fail "apt-get install ${PACKAGES[*]} failed"
fi

for c in "${COMMANDS[@]}"; do
    command -v "$c" >/dev/null 2>&1 || fail "apt-get finished but $c is missing"
done

# podman must be able to run a container here (a machine without user namespaces, overlayfs or
# cgroups fails now, with podman's own message, rather than in the middle of a test).
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}} {{.Host.NetworkBackend}}' \
    >/dev/null || fail "podman is installed but \`podman info\` fails (see above)"
echo "setup-podman: $(podman --version), $(buildah --version | cut -d' ' -f1-3)," \
    "network backend $(podman info --format '{{.Host.NetworkBackend}}')"
