#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/e2e). Idempotent: does nothing when
# /usr/bin/chromium is already there. Never downloads a browser from anywhere but apt.
# Exits non-zero, loudly, when Chromium cannot be installed.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "setup-browser: $("$CHROMIUM" --version 2>/dev/null || echo chromium) already installed at $CHROMIUM"
    exit 0
fi

fail() {
    echo "setup-browser: ERROR: $*" >&2
    echo "setup-browser: the browser tests (pytest -m e2e) cannot run without $CHROMIUM" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: install Debian's 'chromium' package by hand"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "not root and sudo is not available"
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
echo "setup-browser: installing chromium with apt-get"
$SUDO apt-get update -q || fail "apt-get update failed"
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation \
    || fail "apt-get install chromium failed"

[ -x "$CHROMIUM" ] || fail "apt-get finished but $CHROMIUM is missing"
echo "setup-browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium) at $CHROMIUM"
