#!/bin/sh
# install.sh: the Debian packages pylitefs needs and a venv at $PYLITEFS_VENV (/opt/pylitefs/venv) with
# pylitefs installed from the repository at $PYLITEFS_SRC (/opt/pylitefs), in editable mode: after
# `vagrant rsync`, `systemctl restart pylitefs` runs the new code.
#
# Idempotent: packages are installed only when missing, and pip runs only when the repository's
# pyproject.toml is newer than the last install. PYLITEFS_DRY_RUN=1 prints what it would
# do and changes nothing.
set -eu

src=${PYLITEFS_SRC:-/opt/pylitefs}
venv=${PYLITEFS_VENV:-$src/venv}
dry=${PYLITEFS_DRY_RUN:-0}
debs="fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev etcd-server sqlite3 curl"

run() {
    if [ "$dry" = 1 ]; then
        echo "would run: $*"
    else
        "$@"
    fi
}

missing=
for pkg in $debs; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "install.sh: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    run apt-get update -qq
    run apt-get install -y -qq --no-install-recommends $missing
fi

[ -f "$src/pyproject.toml" ] || { echo "install.sh: no pylitefs repository at $src" >&2; exit 1; }
stamp=$venv/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt "$src/pyproject.toml" ]; then
    echo "install.sh: $venv is up to date"
    exit 0
fi
[ -x "$venv/bin/python" ] || run python3 -m venv "$venv"
run "$venv/bin/pip" install -q -e "$src"
run touch "$stamp"
echo "install.sh: pylitefs installed in $venv"
