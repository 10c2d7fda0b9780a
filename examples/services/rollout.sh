#!/usr/bin/env bash
# Rollouts on one machine: every change to a service is a plan you can read and steer. One agent on the embedded
# store (no etcd needed), a four-instance web service, and three changes to it:
#
#   examples/services/rollout.sh up       # the agent; deploy web v1 (a deploy plan); backplane plan web
#   examples/services/rollout.sh bad      # v2 crashes at start: its update fails and is rolled back to v1 by itself
#   examples/services/rollout.sh canary   # v3 with `canary: 1`: one v3 next to the four v1s; the plan waits for promote
#   examples/services/rollout.sh promote  # backplane rollout promote web: the rest rolls, 2 at a time
#   examples/services/rollout.sh bp ARGS...  # any backplane command, as the operator
#   examples/services/rollout.sh env      # eval "$(... env)" gives this shell `backplane` and $OP
#   examples/services/rollout.sh down     # stop the agent and delete the walkthrough's directory
#   examples/services/rollout.sh all      # up, bad, canary, promote, down
#
# Run as root (the agent supervises processes and sets cgroup limits). Everything lives in
# $BACKPLANE_ROLLOUT_DIR (default /tmp/backplane-rollout): the agent's state dir, its log, the spec files; PORTS_FROM
# (default 24800) is the first of the 100 ports the instances get. The same commands work on a cluster: give them
# the cluster's store flags instead (see examples/services/walkthrough.sh).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${BACKPLANE_ROLLOUT_DIR:-/tmp/backplane-rollout}"
MARKER="$DIR/.backplane-rollout"
PORTS_FROM="${PORTS_FROM:-24800}"
NODE="$(command -v node)"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() {
  echo "rollout: $*" >&2
  exit 1
}

# The operator's store flags: the agent's own state dir (the CLI reaches the embedded store through the agent's
# control socket, and signs with the host key in that dir).
OP_ARGS=(--state-dir "$DIR/state")

# Runs a backplane command as the operator, printing it first (with $OP for the store flags).
bp() {
  # shellcheck disable=SC2016 # a literal $OP, for the reader
  printf '$ backplane %s $OP\n' "$*"
  "$NODE" "$REPO/bin/backplane.js" "$@" "${OP_ARGS[@]}"
}
# The same, quietly, for polling.
bpq() { "$NODE" "$REPO/bin/backplane.js" "$@" "${OP_ARGS[@]}"; }

# Alive and not a zombie.
alive() {
  local pid="$1" stat
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat:0:1}" != Z ] && [ "${stat:0:1}" != X ]
}

# The agent's pid, if it still runs and is ours (its command line names our directory).
agent_pid() {
  local pid
  [ -f "$DIR/agent.pid" ] || return 1
  pid="$(cat "$DIR/agent.pid")"
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" && echo "$pid"
}

need_up() {
  [ -e "$MARKER" ] || die "no rollout walkthrough in $DIR: run \`$0 up\` first"
  agent_pid >/dev/null || die "the agent is not running (see $DIR/agent.log); \`$0 down\` and \`$0 up\` again"
}

down() {
  [ -e "$MARKER" ] || { [ -e "$DIR" ] && die "$DIR was not made by this walkthrough; not touching it"; return 0; }
  echo "stopping the agent, deleting $DIR"
  local pid
  if pid="$(agent_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  # An instance outlives its agent by at most its fence: its watchdog (whose command line names the agent's
  # heartbeat file in $DIR) kills it, then exits.
  for _ in $(seq 100); do
    pgrep -f -- "$DIR/state" >/dev/null || break
    sleep 0.1
  done
  rm -rf "$DIR"
}

# Writes $DIR/web-VERSION.yaml: the web service at VERSION, with ENV (extra `KEY: value` pairs for run.env) and
# UPDATE (the update block's lines). Each instance is a tiny Node HTTP server that says which release it runs; with
# CONFIG=broken it exits at start, as a release with a bad config file would.
spec() {
  local version="$1" env="$2" update="$3" file="$DIR/web-$1.yaml"
  cat >"$file" <<EOF
name: web
count: 4
version: $version
run:
  cmd:
    - $NODE
    - -e
    - |
      if (process.env.CONFIG === 'broken') { console.error('web: config: unknown key "listen_port"'); process.exit(1); }
      require('node:http').createServer((req, res) => res.end(process.env.RELEASE + ' ' + process.env.INSTANCE_ID + '\\n')).listen(Number(process.env.PORT_HTTP), '127.0.0.1');
  env: { RELEASE: $version$env }
resources: { cpu: 250m, memory: 64M }
ports: { http: {} }
health:
  http: { port: http, path: /health }
  interval: 1s
update:
$update
EOF
  echo "$file"
}

# Waits until web's current plan has KIND and STATUS (e.g. rollback complete), up to TIMEOUT seconds; prints how long.
wait_plan() {
  local kind="$1" status="$2" timeout="${3:-60}" t0 ms got
  t0=$(date +%s%N)
  while :; do
    # shellcheck disable=SC2016 # JavaScript, not shell
    got="$(bpq plan web --json 2>/dev/null | "$NODE" -e '
      let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
        try { const p = JSON.parse(s).plan; console.log(`${p.kind} ${p.status}`); } catch { console.log("- -"); }
      });')" || got="- -"
    [ "$got" = "$kind $status" ] && break
    if (($(date +%s%N) - t0 > timeout * 1000000000)); then
      bp plan web || true
      die "web's plan is \"$got\", not \"$kind $status\", after ${timeout}s"
    fi
    sleep 0.2
  done
  ms=$((($(date +%s%N) - t0) / 1000000))
  printf '(web'"'"'s plan: %s %s after another %d.%01ds)\n' "$kind" "$status" $((ms / 1000)) $((ms % 1000 / 100))
}

# On an error during `up`: show the agent's last log lines, then stop everything.
up_failed() {
  local rc=$?
  [ "$rc" = 0 ] && return
  echo "failed (exit $rc): the agent's log ends with:"
  tail -n 15 "$DIR/agent.log" 2>/dev/null || true
  down
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root: the agent supervises processes and sets cgroup limits"
  if [ -e "$DIR" ]; then
    [ -e "$MARKER" ] && die "a rollout walkthrough is already in $DIR: \`$0 down\` first"
    die "$DIR exists and was not made by this walkthrough; set BACKPLANE_ROLLOUT_DIR to a new path"
  fi
  [ -f "$REPO/dist/backplane.mjs" ] || (cd "$REPO" && "$NODE" scripts/build.mjs)
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  touch "$MARKER"
  trap 'trap - EXIT; echo; echo "stopped: cleaning up"; down; exit 130' INT TERM
  trap up_failed EXIT

  say "one agent on the embedded store: it is the cluster, its controller and its only host"
  echo 'resources: []' >"$DIR/agent.yaml"
  # shellcheck disable=SC2054 # cpu=2,memory=1G is one argument
  local args=(run -f "$DIR/agent.yaml" --hostname h1 --state-dir "$DIR/state" --capacity cpu=2,memory=1G --ports "$PORTS_FROM-$((PORTS_FROM + 99))")
  echo "\$ backplane ${args[*]} &"
  echo "OP=\"${OP_ARGS[*]}\"   # the store flags every operator command below gets"
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH" setsid "$NODE" "$REPO/bin/backplane.js" "${args[@]}" >>"$DIR/agent.log" 2>&1 </dev/null &
  echo $! >"$DIR/agent.pid"
  for _ in $(seq 300); do
    grep -q 'cluster store: ' "$DIR/agent.log" 2>/dev/null && break
    agent_pid >/dev/null || die "the agent exited"
    sleep 0.1
  done
  grep -q 'cluster store: ' "$DIR/agent.log" || die "the agent did not start within 30 s"

  say "deploy web v1: four instances; every change is a plan (this one: deploy, all at once)"
  local f
  f="$(spec v1 "" "  maxParallel: 2")"
  echo "\$ cat $f"
  cat "$f"
  bp deploy -f "$f" --wait 60s
  wait_plan deploy complete 30
  bp plan web
  trap - INT TERM EXIT
  echo
  echo "Up. Next: $0 bad"
}

bad() {
  need_up
  say "update to v2, which crashes at start: its plan fails and rolls back to v1 by itself (autoRevert is on by default)"
  local f
  f="$(spec v2 ", CONFIG: broken" "  maxParallel: 2")"
  echo "# web-v2.yaml is web-v1.yaml with version v2 and CONFIG: broken in run.env"
  # --wait ends with an error once the update was rolled back.
  bp deploy -f "$f" --wait 60s || echo "(deploy --wait exited $?: the update was rolled back)"
  wait_plan rollback complete 60
  bp plan web
  say "the plans so far: the failed update, and why"
  bp plan web --history --log-lines 0
}

canary() {
  need_up
  say "update to v3 with a canary: one v3 instance next to the four v1s; the plan waits for promote"
  local f
  f="$(spec v3 "" "  maxParallel: 2
  canary: 1")"
  echo "# web-v3.yaml: version v3, and in the update block:"
  sed -n '/^update:/,$p' "$f"
  # --wait returns once the canary is healthy and the plan waits for the operator.
  bp deploy -f "$f" --wait 60s
  wait_plan update waiting 30
  bp plan web
  bp service web --events 1
}

promote() {
  need_up
  say "promote: the canary is good; the other three roll to v3, 2 at a time"
  bp rollout promote web
  wait_plan update complete 90
  bp plan web
  bp service web --events 6
}

case "${1:-}" in
  up) up ;;
  bad) bad ;;
  canary) canary ;;
  promote) promote ;;
  bp)
    need_up
    shift
    bp "$@"
    ;;
  env)
    need_up
    echo "alias backplane='$NODE $REPO/bin/backplane.js'; OP='${OP_ARGS[*]}'"
    ;;
  down) down ;;
  all)
    "$0" up
    trap '"$0" down' EXIT
    "$0" bad
    "$0" canary
    "$0" promote
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
