#!/bin/sh
# pylitefs.sh NAME ADDR PEER...: run pylitefs on this node under systemd with its generated litefs.yml.
#
# Writes $ROOT/etc/litefs.yml (gen-config.sh; mode 600: it holds the cluster secret from
# $PYLITEFS_CLUSTER_SECRET), creates the mount point and data dir, installs pylitefs.service and enables and
# starts it, restarting it when the config or the unit changed. Running it again changes nothing.
# PYLITEFS_VENV (/opt/pylitefs/venv) is where install.sh put pylitefs.
set -eu
here=$(dirname "$0")
. "$here/common.sh"

check_node "$@"
venv=${PYLITEFS_VENV:-/opt/pylitefs/venv}

config=$(sh "$here/gen-config.sh" "$@")
config_changed=$(printf '%s\n' "$config" | install_file 600 "$ROOT/etc/litefs.yml")
mkdir -p "$ROOT/litefs" "$ROOT/var/lib/litefs"

unit_changed=$(install_file 644 "$ROOT/etc/systemd/system/pylitefs.service" <<UNIT
# Written by pylitefs vagrant/provision/pylitefs.sh.
[Unit]
Description=pylitefs: replicated SQLite databases on a FUSE mount at $ROOT/litefs
Documentation=file:///opt/pylitefs/README.md
# No ordering after etcd.service: the node mounts at once and joins the cluster when etcd answers.
After=network-online.target
Wants=network-online.target etcd.service

[Service]
# exec: runs "python -m pylitefs.sampleapp": the venv's python comes first.
Environment=PATH=$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=$venv/bin/pylitefs mount --config $ROOT/etc/litefs.yml
# SIGTERM: pylitefs stops the application, hands the lease over and unmounts.
TimeoutStopSec=60
Restart=on-failure
# Longer than the lease TTL: after a crash the cluster elects a new primary before this node comes back.
RestartSec=20

[Install]
WantedBy=multi-user.target
UNIT
)

if systemd_running; then
    [ -z "$unit_changed" ] || systemctl daemon-reload
    systemctl enable --quiet pylitefs
    if [ -n "$config_changed$unit_changed" ]; then
        systemctl restart pylitefs
    elif ! systemctl is-active --quiet pylitefs; then
        systemctl start pylitefs
    fi
    echo "pylitefs.sh: pylitefs.service runs on $1 ($ROOT/etc/litefs.yml)"
else
    echo "pylitefs.sh: wrote $ROOT/etc/litefs.yml and pylitefs.service (no systemd: not started)"
fi
