#!/bin/sh
# The pylitefs image's entrypoint: check FUSE, create the mount and data
# directories, fill in defaults for the variables /etc/litefs.yml uses, then
# run the node in the foreground (it runs the application through `exec:`).
#
# Every path and port is a variable, so the same script runs outside Docker
# (the test suite does): PYLITEFS_CONFIG, PYLITEFS_MOUNT_DIR, PYLITEFS_DATA_DIR.
# Arguments are passed on to `pylitefs mount` (e.g. --log-level DEBUG).
set -eu

fail() {
    echo "pylitefs-entrypoint: $*" >&2
    exit 1
}

: "${PYLITEFS_CONFIG:=/etc/litefs.yml}"
: "${PYLITEFS_MOUNT_DIR:=/litefs}"
: "${PYLITEFS_DATA_DIR:=/var/lib/litefs}"
: "${PYLITEFS_HOSTNAME:=$(uname -n)}"
: "${PYLITEFS_HTTP_PORT:=20202}"
: "${PYLITEFS_ADVERTISE_URL:=http://${PYLITEFS_HOSTNAME}:${PYLITEFS_HTTP_PORT}}"
: "${PYLITEFS_CANDIDATE:=true}"
: "${PYLITEFS_ETCD_ENDPOINTS:=http://etcd:2379}"
: "${PYLITEFS_PROXY_PORT:=8080}"
: "${PYLITEFS_PROXY_URL:=http://${PYLITEFS_HOSTNAME}:${PYLITEFS_PROXY_PORT}}"
: "${PYLITEFS_APP_PORT:=8081}"
export PYLITEFS_CONFIG PYLITEFS_MOUNT_DIR PYLITEFS_DATA_DIR PYLITEFS_HOSTNAME PYLITEFS_HTTP_PORT \
    PYLITEFS_ADVERTISE_URL PYLITEFS_CANDIDATE PYLITEFS_ETCD_ENDPOINTS PYLITEFS_PROXY_PORT \
    PYLITEFS_PROXY_URL PYLITEFS_APP_PORT

[ -c /dev/fuse ] || fail "/dev/fuse is missing: run the container with --device /dev/fuse --cap-add SYS_ADMIN"
[ -r "$PYLITEFS_CONFIG" ] || fail "cannot read the config file $PYLITEFS_CONFIG (PYLITEFS_CONFIG)"
[ -n "${PYLITEFS_CLUSTER_SECRET:-}" ] ||
    fail "PYLITEFS_CLUSTER_SECRET is not set: every node of the cluster needs the same secret"
mkdir -p "$PYLITEFS_MOUNT_DIR" "$PYLITEFS_DATA_DIR"

exec pylitefs mount --config "$PYLITEFS_CONFIG" \
    --fuse.dir "$PYLITEFS_MOUNT_DIR" --data.dir "$PYLITEFS_DATA_DIR" "$@"
