#!/usr/bin/env bash
# Three hosts on one machine: a one-member etcd on 127.0.0.2 and three agents (a, b, c), each with its own
# --hostname and --state-dir, all running examples/cluster/graph.ts. Every host manages two private files, exports
# two, and collects all exports into $BACKPLANE_DEMO_ROOT/<host>/collected. Ctrl-C stops everything and cleans up.
#
#   examples/cluster/run-demo.sh                 # until Ctrl-C
#   DEMO_SECONDS=10 examples/cluster/run-demo.sh # stop by itself after 10 s (for scripts)
#   ETCD_PORT=23791 ...                          # if 127.0.0.2:23790 is taken (the peer port is ETCD_PORT + 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

# Not /tmp/backplane-demo: that is the quick start's (examples/demo.yaml), and this script removes its root at the end.
export BACKPLANE_DEMO_ROOT="${BACKPLANE_DEMO_ROOT:-/tmp/backplane-cluster-demo}"
# The root is removed at the end, so it must be one this script made: a marker file says so.
MARKER=.backplane-cluster-demo
if [ -e "$BACKPLANE_DEMO_ROOT" ] && [ ! -e "$BACKPLANE_DEMO_ROOT/$MARKER" ]; then
  echo "$BACKPLANE_DEMO_ROOT exists and was not made by this demo; it would be deleted at the end." >&2
  echo "Set BACKPLANE_DEMO_ROOT to a path that does not exist yet." >&2
  exit 1
fi
ETCD_IP=127.0.0.2
ETCD_PORT="${ETCD_PORT:-23790}"
PEER_PORT=$((ETCD_PORT + 10))
ETCD_URL="http://$ETCD_IP:$ETCD_PORT"
CLUSTER=demo
HOSTS=(a b c)

command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 1; }
if curl -s -m 1 -o /dev/null "$ETCD_URL/health"; then
  echo "something already answers on $ETCD_URL; set ETCD_PORT to a free port" >&2
  exit 1
fi
[ -f dist/backplane.mjs ] || node scripts/build.mjs

WORK="$(mktemp -d /tmp/backplane-demo-run.XXXXXX)"
ETCD_PID=""
declare -A AGENT_PID=()

cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping the agents and etcd..."
  for h in "${HOSTS[@]}"; do
    pid="${AGENT_PID[$h]:-}"
    # A frozen agent (kill -STOP) cannot handle SIGTERM until it is continued.
    [ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
  done
  for h in "${HOSTS[@]}"; do
    pid="${AGENT_PID[$h]:-}"
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  if [ -n "$ETCD_PID" ]; then
    kill -TERM "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
  fi
  # etcd preallocates ~120 MB of WAL: never leave its data dir behind.
  rm -rf "$WORK"
  [ -e "$BACKPLANE_DEMO_ROOT/$MARKER" ] && rm -rf "$BACKPLANE_DEMO_ROOT"
  echo "cleaned up $WORK and $BACKPLANE_DEMO_ROOT"
}
trap cleanup INT TERM EXIT

# Fast timings: ready in ~0.2 s, and lease TTLs down to 1 s are allowed.
etcd --name demo --data-dir "$WORK/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://$ETCD_IP:$PEER_PORT" --initial-advertise-peer-urls "http://$ETCD_IP:$PEER_PORT" \
  --initial-cluster "demo=http://$ETCD_IP:$PEER_PORT" --initial-cluster-token "demo-$$-$RANDOM" \
  --heartbeat-interval 25 --election-timeout 250 --logger zap --log-level error >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 100); do
  curl -s -m 1 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"' && break
  kill -0 "$ETCD_PID" 2>/dev/null || { echo "etcd failed to start:" >&2; cat "$WORK/etcd.log" >&2; exit 1; }
  sleep 0.1
done

rm -rf "$BACKPLANE_DEMO_ROOT"
mkdir -p "$BACKPLANE_DEMO_ROOT"
touch "$BACKPLANE_DEMO_ROOT/$MARKER"
# Host a holds the cluster's CA (it decides which hosts the cluster believes); b and c join with a token it made.
node bin/backplane.js cluster init --etcd "$ETCD_URL" --cluster "$CLUSTER" --state-dir "$WORK/state-a" --hostname a
( umask 077; node bin/backplane.js hosts token --etcd "$ETCD_URL" --cluster "$CLUSTER" --state-dir "$WORK/state-a" \
    --uses 2 --ttl 10m >"$WORK/join-token" )
for h in "${HOSTS[@]}"; do
  join=()
  [ "$h" = a ] || join=(--join-token-file "$WORK/join-token")
  # Each agent's log lines are prefixed with its host; $! is the agent itself, not the prefixing sed.
  node bin/backplane.js run --file examples/cluster/graph.ts --hostname "$h" --etcd "$ETCD_URL" --cluster "$CLUSTER" \
    --state-dir "$WORK/state-$h" "${join[@]}" > >(sed -u "s/^/[$h] /") 2>&1 &
  AGENT_PID[$h]=$!
done

cat <<EOF

Three agents are running: a (pid ${AGENT_PID[a]}), b (pid ${AGENT_PID[b]}), c (pid ${AGENT_PID[c]}); etcd at $ETCD_URL.
Things to try in another terminal:

  ls -R $BACKPLANE_DEMO_ROOT                         # each host: 2 private files, peers, 6 collected files
  cat $BACKPLANE_DEMO_ROOT/a/collected/*-exported-1
  rm $BACKPLANE_DEMO_ROOT/b/private-1                # repaired at once, by b alone
  \$EDITOR $REPO/examples/cluster/graph.ts           # change \`banner\`: every host re-exports, every collector updates
  node $REPO/bin/backplane.js cluster status --etcd $ETCD_URL --cluster $CLUSTER --state-dir $WORK/state-a
  node $REPO/bin/backplane.js cluster members --etcd $ETCD_URL --cluster $CLUSTER --state-dir $WORK/state-a --json
  node $REPO/bin/backplane.js hosts list --etcd $ETCD_URL --cluster $CLUSTER --state-dir $WORK/state-a
  node $REPO/bin/backplane.js hosts revoke c --etcd $ETCD_URL --cluster $CLUSTER --state-dir $WORK/state-a
      # c revoked: a and b drop its files at once, whatever c keeps writing
  kill -STOP ${AGENT_PID[c]}; sleep 5; ls $BACKPLANE_DEMO_ROOT/a/collected; kill -CONT ${AGENT_PID[c]}
      # c frozen: its lease expires (3 s) and its files leave a and b; continued, it registers again and they return
  kill -TERM ${AGENT_PID[b]}                                   # b leaves: its exports are withdrawn at once

Ctrl-C here stops everything and removes $BACKPLANE_DEMO_ROOT and the etcd data.

EOF

if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
  exit 0
fi
wait
