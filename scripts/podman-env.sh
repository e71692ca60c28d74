#!/usr/bin/env bash
# Source me: the podman settings `make images` and `make pods-test` run with, in a
# containers.conf of the project's own (CONTAINERS_CONF; the machine's configuration is left as
# it is). Two things differ from Debian's defaults, both for machines like CI's containers:
#
# - runtime runc: crun 1.8 (bookworm) refuses to start containers on a host with cgroups in
#   hybrid mode (v1 controllers plus an empty v2 hierarchy); runc runs there and everywhere else.
# - default ulimits within the caller's hard limits: podman raises RLIMIT_NOFILE to 1048576 by
#   default, which fails without CAP_SYS_RESOURCE (a container's root usually lacks it).
#
# An existing CONTAINERS_CONF wins. The file lives in .local/podman/ (git-ignored).
_pdrm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${CONTAINERS_CONF:-}" ]; then
    _pdrm_nofile="$(ulimit -Hn)"
    [ "$_pdrm_nofile" = unlimited ] && _pdrm_nofile=1048576
    _pdrm_nproc="$(ulimit -Hu)"
    { [ "$_pdrm_nproc" = unlimited ] || [ "$_pdrm_nproc" -gt 32768 ]; } && _pdrm_nproc=32768
    mkdir -p "$_pdrm_root/.local/podman"
    cat >"$_pdrm_root/.local/podman/containers.conf" <<CONF
# Written by scripts/podman-env.sh; see there.
[containers]
default_ulimits = ["nofile=$_pdrm_nofile:$_pdrm_nofile", "nproc=$_pdrm_nproc:$_pdrm_nproc"]

[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$_pdrm_root/.local/podman/containers.conf"
    unset _pdrm_nofile _pdrm_nproc
fi
unset _pdrm_root
