#!/usr/bin/env bash
# Install what pylitefs needs on a Debian machine, then (re)create .venv.
# Idempotent: Debian packages are installed only when missing, and the venv is
# rebuilt only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

# vagrant: tests/cluster/test_vagrant.py runs `vagrant validate` on vagrant/Vagrantfile (no VM is started).
DEBS=(fuse3 libfuse3-dev pkg-config gcc sqlite3 etcd-server bindfs iproute2 psmisc vagrant)
PYTHON=${PYTHON:-python3}

missing=()
for pkg in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=(python3 python3-venv python3-dev)
    PYTHON=python3
elif [[ $("$PYTHON" -c 'import sys; print(sys.prefix)') == /usr ]]; then
    # Debian's own Python: venv needs python3-venv (ensurepip), and pyfuse3
    # builds from source against python3-dev's headers.
    for pkg in python3-venv python3-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
fi
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install: missing Debian packages (${missing[*]}); run 'make install' as root" >&2
        exit 1
    fi
    echo "install: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.installed
if [[ -f $stamp && $stamp -nt pyproject.toml ]]; then
    exit 0
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv  # missing, or left half-made by a failed run
    "$PYTHON" -m venv .venv
fi
if ! { .venv/bin/python -m pip install -q --upgrade pip &&
        .venv/bin/python -m pip install -q -e '.[test]'; } >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "install: pip failed (log above, also in .venv/install.log)" >&2
    exit 1
fi
touch "$stamp"
echo "install: .venv ready ($(.venv/bin/python --version))"
