# Sourced by the provisioning scripts: argument checks, paths under $PYLITEFS_ROOT, and writes that change
# nothing when the content is already there (so that every script can run twice).
#
# Every path a script writes is "$ROOT/..." with ROOT=${PYLITEFS_ROOT:-} (empty on a real node), so that the
# test suite runs the scripts on one machine with ROOT=/tmp/...; systemctl is skipped when systemd is not
# PID 1 or PYLITEFS_NO_SYSTEMD=1.

ROOT=${PYLITEFS_ROOT:-}
HTTP_PORT=${PYLITEFS_HTTP_PORT:-20202}
ETCD_CLIENT_PORT=${PYLITEFS_ETCD_CLIENT_PORT:-2379}
ETCD_PEER_PORT=${PYLITEFS_ETCD_PEER_PORT:-2380}

die() {
    echo "${0##*/}: $*" >&2
    exit 1
}

# check_node NAME ADDR PEER...: the arguments every script takes; PEER is NAME=ADDR of every node, this one too.
check_node() {
    [ $# -ge 3 ] || die "usage: ${0##*/} NAME ADDR PEER... (PEER: name=address of every node, this one included)"
    name=$1 addr=$2
    shift 2
    check_name "$name"
    check_addr "$addr"
    found=
    for peer in "$@"; do
        case $peer in
            *=*) ;;
            *) die "peer '$peer' is not NAME=ADDR" ;;
        esac
        check_name "${peer%%=*}"
        check_addr "${peer#*=}"
        [ "$peer" = "$name=$addr" ] && found=1
    done
    [ -n "$found" ] || die "this node ($name=$addr) is not in the peer list: $*"
}

check_name() {
    case $1 in
        '' | -* | *[!a-z0-9-]*) die "node name '$1' must be lowercase letters, digits and '-'" ;;
    esac
}

check_addr() {
    case $1 in
        '' | *[!0-9.]* | .* | *. | *..*) die "address '$1' is not an IPv4 address" ;;
    esac
}

# systemd_running: true when systemctl calls should be made.
systemd_running() {
    [ "${PYLITEFS_NO_SYSTEMD:-0}" != 1 ] && [ -d /run/systemd/system ] &&
        [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]
}

# install_file MODE DEST: write stdin to DEST (mode MODE) unless DEST already holds exactly that;
# prints "changed" when it wrote.
install_file() {
    mode=$1 dest=$2
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest" && [ "$(stat -c %a "$dest")" = "$mode" ]; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$dest"
        echo changed
    fi
}
