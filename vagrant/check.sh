#!/usr/bin/env bash
# check.sh: after `vagrant up`, show that the cluster replicates and fails over. Run it from this directory.
#
# 1. finds the primary (every node's /info on :20202);
# 2. writes a row through a replica's proxy (:8080): the sample app on the primary inserts it;
# 3. reads the rows through every node's proxy, with the node's role and app.db position (/status);
# 4. kills pylitefs on the primary (systemctl kill -s KILL, as if its machine died), shows the new primary
#    and a write through it;
# 5. starts the old primary again and shows it rejoined as a replica at the new primary's position.
# Needs curl and python3 on this host; PYLITEFS_NODES and PYLITEFS_SUBNET as for `vagrant up`.
set -euo pipefail
cd "$(dirname "$0")"

NODES=${PYLITEFS_NODES:-3}
SUBNET=${PYLITEFS_SUBNET:-192.168.56}
TIMEOUT=${PYLITEFS_CHECK_TIMEOUT:-120}
names=()
for ((i = 1; i <= NODES; i++)); do names+=("node$i"); done

addr() { echo "$SUBNET.$((10 + ${1#node}))"; }

# get NODE PORT PATH: the JSON answer, or nothing when the node does not answer.
get() { curl -fsS --max-time 3 "http://$(addr "$1"):$2$3" 2>/dev/null || true; }

# field JSON PYTHON-EXPRESSION (over `d`): its value, or nothing.
field() {
    python3 -c 'import json, sys
try:
    d = json.loads(sys.argv[1]); v = eval(sys.argv[2])
except Exception:
    v = None
print("" if v is None else v)' "$1" "$2"
}

is_replica() { [[ $(role "$1") == replica ]] && echo yes || true; }
role() { field "$(get "$1" 20202 /info)" 'd["role"]'; }
position() { field "$(get "$1" 20202 /status)" 'd["databases"]["app.db"]["txid"]'; }

# primary [EXCEPT]: the one node (not EXCEPT) that says it is primary, or nothing.
primary() {
    local found=()
    for n in "${names[@]}"; do
        [[ $n == "${1:-}" ]] && continue
        [[ $(role "$n") == primary ]] && found+=("$n")
    done
    ((${#found[@]} == 1)) && echo "${found[0]}" || true
}

# wait_for WHAT COMMAND...: run COMMAND until it prints something; print that, or fail after TIMEOUT s.
wait_for() {
    local what=$1 out deadline=$((SECONDS + TIMEOUT))
    shift
    until out=$("$@") && [[ -n $out ]]; do
        ((SECONDS < deadline)) || { echo "check.sh: FAILED: no $what after ${TIMEOUT}s" >&2; exit 1; }
        sleep 0.5
    done
    echo "$out"
}

# caught_up PRIMARY NODE: prints the TXID when NODE's app.db is at PRIMARY's position.
caught_up() {
    local want
    want=$(position "$1")
    [[ -n $want && $(position "$2") == "$want" ]] && echo "$want" || true
}

show() {
    for n in "${names[@]}"; do
        local status rows
        status=$(get "$n" 20202 /status)
        rows=$(get "$n" 8080 /)
        printf '   %-6s %-8s app.db at TXID %-4s %s rows, last: %s\n' "$n" \
            "$(field "$status" 'd["role"]')" "$(field "$status" 'd["databases"]["app.db"]["txid"]')" \
            "$(field "$rows" 'len(d["rows"])')" \
            "$(field "$rows" '"%(text)s (inserted by %(node)s)" % d["rows"][-1]')"
    done
}

write() {  # write NODE TEXT: POST through NODE's proxy; prints who inserted it
    local out
    out=$(curl -fsS --max-time 10 -H 'Content-Type: application/json' \
        -d "{\"text\": \"$2\"}" "http://$(addr "$1"):8080/")
    field "$out" 'd["node"]'
}

other() {  # other NODE: a node that is not NODE
    for n in "${names[@]}"; do [[ $n != "$1" ]] && { echo "$n"; return; }; done
}

echo "1. waiting for the cluster (${names[*]} at $(addr node1)..) to elect a primary"
old=$(wait_for "primary" primary)
echo "   primary: $old"

via=$(other "$old")
echo "2. writing a row through $via's proxy (http://$(addr "$via"):8080/)"
echo "   inserted by $(write "$via" "hello from check.sh through $via")"
for n in "${names[@]}"; do wait_for "$n caught up" caught_up "$old" "$n" >/dev/null; done
echo "3. every node, through its own proxy and /status:"
show

echo "4. killing pylitefs on the primary $old (systemctl kill -s KILL: as if its machine died)"
vagrant ssh "$old" -c "sudo systemctl kill --kill-who=main -s KILL pylitefs" 2>/dev/null
start=$SECONDS
if ((NODES == 1)); then
    echo "   a single node has no one to fail over to"
    exit 0
fi
new=$(wait_for "new primary" primary "$old")
echo "   new primary: $new, after $((SECONDS - start)) s"
echo "   a write through $new's proxy: inserted by $(write "$new" "after the failover, through $new")"

echo "5. starting pylitefs on $old again"
vagrant ssh "$old" -c "sudo systemctl restart pylitefs" 2>/dev/null
wait_for "$old as a replica" is_replica "$old" >/dev/null
txid=$(wait_for "$old caught up" caught_up "$new" "$old")
echo "   $old rejoined as a replica of $new, at TXID $txid"
show
echo "check.sh: replication and failover OK"
