#!/usr/bin/env bash
# Redis that heals itself, on one machine: the three agents of examples/services/walkthrough.sh (a one-member etcd on
# loopback, h1, h2, h3), a `kind: redis` object with two replicas (examples/backplanes/cache.yaml), and kill -9 of its
# primary while a client writes through the discovery entry cache.primary. Run as root.
#
#   examples/backplanes/redis.sh up             # the cluster; deploy cache; wait for a primary and two linked replicas
#   examples/backplanes/redis.sh status         # backplane app cache: primary, members, lag, last failover
#   examples/backplanes/redis.sh kill-primary   # kill -9 the primary's redis-server while writing; time to the next write
#   examples/backplanes/redis.sh down           # stop everything and delete the walkthrough's directory
#   examples/backplanes/redis.sh all            # up, kill-primary, status, down
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
WT="$REPO/examples/services/walkthrough.sh"
export BACKPLANE_WALKTHROUGH_DIR="${BACKPLANE_WALKTHROUGH_DIR:-/tmp/backplane-redis-walkthrough}"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() {
  echo "redis.sh: $*" >&2
  exit 1
}
bp() { "$WT" bp "$@"; }
# The operator's store flags, as walkthrough.sh wrote them.
bpq() {
  # shellcheck source=/dev/null
  . "$BACKPLANE_WALKTHROUGH_DIR/env"
  node "$REPO/bin/backplane.js" "$@" "${OP_ARGS[@]}"
}
# "host:port" of the member discovery lists as cache.primary now ("" when none).
primary() {
  bpq app cache --json 2>/dev/null | node -e '
    let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
      const e = JSON.parse(s).discovery.primary ?? [];
      process.stdout.write(e.length === 1 ? e[0].split(" ")[1] : "");
    });'
}
# The primary's address: discovery lists the host name; on this one-machine cluster every host is 127.0.0.1.
write() { timeout 1 redis-cli -h 127.0.0.1 -p "${1##*:}" SET "walkthrough:$2" "$2" 2>/dev/null; }

up() {
  command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server redis-tools)"
  WALKTHROUGH_WEB=0 "$WT" up
  say "deploy the cache: one primary and two replicas, one member per host"
  (cd "$REPO" && bp deploy -f examples/backplanes/cache.yaml)
  local p=""
  for _ in $(seq 300); do
    p="$(primary)"
    [ -n "$p" ] && bpq app cache --json | grep -q '"replicas linked": 2' && break
    sleep 0.2
  done
  [ -n "$p" ] || die "no primary after 60 s: see \`$0 status\`"
  status
}

status() { bp app cache; }

kill_primary() {
  local p pid t0 t1 n=0 q
  p="$(primary)"
  [ -n "$p" ] || die "no primary now"
  pid="$(pgrep -f "redis-server .*:${p##*:}\$" | head -1)"
  [ -n "$pid" ] || die "no redis-server listening on ${p##*:}"
  say "kill -9 the primary's redis-server (pid $pid, $p) while a client writes through cache.primary"
  t0=$(date +%s%N)
  kill -9 "$pid"
  while :; do
    q="$(primary)"
    if [ -n "$q" ] && [ "$(write "$q" "$n")" = OK ]; then break; fi
    n=$((n + 1))
    [ $(($(date +%s%N) - t0)) -lt 30000000000 ] || die "no write accepted within 30 s"
    sleep 0.05
  done
  t1=$(date +%s%N)
  echo "first write accepted through cache.primary ($q) $(((t1 - t0) / 1000000)) ms after the kill"
  say "the old primary comes back as a replica"
  sleep 2
  status
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  kill-primary) kill_primary ;;
  down) "$WT" down ;;
  all)
    up
    kill_primary
    "$WT" down
    ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac
