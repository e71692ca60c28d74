#!/usr/bin/env bash
# Install promtool (Debian's `prometheus` package) for the alert-rule unit tests. Idempotent;
# exits non-zero, loudly, when it cannot be installed. The Prometheus server the package also
# ships is not started by us (no init system in CI containers).
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "setup-tools: $(promtool --version 2>&1 | head -1)"
    exit 0
fi

fail() {
    echo "setup-tools: ERROR: $*" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: install Debian's 'prometheus' package (promtool) by hand"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "not root and sudo is not available"
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q || fail "apt-get update failed"
# policy-rc.d keeps the package from starting a Prometheus server during installation
$SUDO apt-get install -y -q --no-install-recommends prometheus || fail "apt-get install prometheus failed"
command -v promtool >/dev/null 2>&1 || fail "apt-get finished but promtool is missing"
echo "setup-tools: installed $(promtool --version 2>&1 | head -1)"
