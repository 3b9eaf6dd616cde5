#!/bin/sh
# gen-config.sh NAME ADDR PEER... > litefs.yml
#
# Prints the litefs.yml of node NAME, reachable at ADDR, in a cluster whose nodes are PEER... (NAME=ADDR each,
# this node included): an etcd lease over every node's etcd member, this node's own advertise URL, the
# proxy on :8080 in front of the sample app on :8081, which pylitefs starts itself (exec).
#
# Environment: PYLITEFS_CLUSTER_SECRET (required; letters, digits and ._~+/=- only), PYLITEFS_ROOT (prefix of
# the mount point and data dir), PYLITEFS_HTTP_PORT (20202), PYLITEFS_ETCD_CLIENT_PORT (2379),
# PYLITEFS_LEASE_TTL (10s), PYLITEFS_ETCD_TIMEOUT (2s, less than the TTL), PYLITEFS_APP (1; 0 leaves out the proxy and the sample app).
set -eu
. "$(dirname "$0")/common.sh"

check_node "$@"
name=$1 addr=$2
shift 2

secret=${PYLITEFS_CLUSTER_SECRET:-}
[ -n "$secret" ] || die "PYLITEFS_CLUSTER_SECRET is empty: every node needs the same cluster secret"
case $secret in
    *[!A-Za-z0-9._~+/=-]*) die "PYLITEFS_CLUSTER_SECRET may hold only letters, digits and ._~+/=-" ;;
esac
ttl=${PYLITEFS_LEASE_TTL:-10s}
timeout=${PYLITEFS_ETCD_TIMEOUT:-2s}
for duration in "$ttl" "$timeout"; do
    case $duration in
        '' | *[!0-9a-z.]*) die "'$duration' is not a duration such as 10s or 500ms" ;;
    esac
done

endpoints=
for peer in "$@"; do
    endpoints="$endpoints${endpoints:+, }\"http://${peer#*=}:$ETCD_CLIENT_PORT\""
done

cat <<YAML
# litefs.yml of $name, written by vagrant/provision/gen-config.sh: do not edit, provision again.
fuse:
  dir: "$ROOT/litefs"
data:
  dir: "$ROOT/var/lib/litefs"
http:
  addr: ":$HTTP_PORT"
lease:
  type: etcd
  candidate: true
  hostname: "$name"
  advertise-url: "http://$addr:$HTTP_PORT"
  etcd:
    endpoints: [$endpoints]
    ttl: "$ttl"
    timeout: "$timeout"
cluster:
  secret: "$secret"
YAML

if [ "${PYLITEFS_APP:-1}" != 0 ]; then
    cat <<YAML
proxy:
  addr: ":8080"
  target: "localhost:8081"
  db: "app.db"
  advertise-url: "http://$addr:8080"
exec: "python -m pylitefs.sampleapp --db $ROOT/litefs/app.db --port 8081"
YAML
fi
