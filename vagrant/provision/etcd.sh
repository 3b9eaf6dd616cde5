#!/bin/sh
# etcd.sh NAME ADDR PEER...: make this node a member of the cluster's etcd (Debian's etcd-server).
#
# Writes $ROOT/etc/default/etcd (read by Debian's etcd.service; the test suite reads it too) naming every
# PEER (NAME=ADDR) in the initial cluster, and a drop-in that lets a new member wait for its quorum, then
# (re)starts etcd when its settings changed. The data dir is /var/lib/etcd/pylitefs, not Debian's default:
# the member etcd-server started at installation lives there and would ignore the initial cluster.
# Running it again changes nothing.
set -eu
. "$(dirname "$0")/common.sh"

check_node "$@"
name=$1 addr=$2
shift 2

cluster=
for peer in "$@"; do
    cluster="$cluster${cluster:+,}${peer%%=*}=http://${peer#*=}:$ETCD_PEER_PORT"
done

env_changed=$(install_file 644 "$ROOT/etc/default/etcd" <<CONF
# Written by pylitefs vagrant/provision/etcd.sh: this node's member of the cluster's etcd.
ETCD_NAME="$name"
ETCD_DATA_DIR="$ROOT/var/lib/etcd/pylitefs"
ETCD_LISTEN_PEER_URLS="http://$addr:$ETCD_PEER_PORT"
ETCD_INITIAL_ADVERTISE_PEER_URLS="http://$addr:$ETCD_PEER_PORT"
ETCD_LISTEN_CLIENT_URLS="http://$addr:$ETCD_CLIENT_PORT,http://127.0.0.1:$ETCD_CLIENT_PORT"
ETCD_ADVERTISE_CLIENT_URLS="http://$addr:$ETCD_CLIENT_PORT"
ETCD_INITIAL_CLUSTER="$cluster"
ETCD_INITIAL_CLUSTER_STATE="new"
ETCD_INITIAL_CLUSTER_TOKEN="pylitefs"
CONF
)
unit_changed=$(install_file 644 "$ROOT/etc/systemd/system/etcd.service.d/pylitefs.conf" <<'CONF'
# Written by pylitefs vagrant/provision/etcd.sh.
[Service]
# A new member is ready only once a quorum of members runs: the first node waits for the next ones.
TimeoutStartSec=infinity
Restart=on-failure
RestartSec=2
CONF
)

if systemd_running; then
    [ -z "$unit_changed" ] || systemctl daemon-reload
    systemctl enable --quiet etcd
    # --no-block: the first member becomes ready only when the second one starts, in its own provisioning.
    if [ -n "$env_changed$unit_changed" ]; then
        systemctl restart --no-block etcd
    elif ! systemctl is-active --quiet etcd; then
        systemctl start --no-block etcd
    fi
    echo "etcd.sh: $name is an etcd member of $cluster"
else
    echo "etcd.sh: wrote $ROOT/etc/default/etcd (no systemd: etcd not started)"
fi
