#!/usr/bin/env bash
# A worker service that scales itself on the length of a queue, within the bounds the operator allowed. One agent on
# the embedded store (no etcd needed), the queue (queue.yaml) and the workers (worker.yaml, scale: {min: 1, max: 4}):
#
#   examples/worker/walkthrough.sh up        # the agent; deploy the queue and one worker
#   examples/worker/walkthrough.sh push N    # push N jobs (35: instance 0 asks for ceil(35/10) = 4 workers)
#   examples/worker/walkthrough.sh watch S   # for S seconds (default 30): queue length, the count in force, instances
#   examples/worker/walkthrough.sh ask N     # instance 0 asks for N by hand (9: refused, above the max 4)
#   examples/worker/walkthrough.sh bp ARGS...  # any backplane command, as the operator
#   examples/worker/walkthrough.sh down      # stop the agent and delete the walkthrough's directory
#   examples/worker/walkthrough.sh all       # up, push 35, up to 4, drained back to 1, ask 9 (refused), down
#
# Run as root (the agent supervises processes and sets cgroup limits). Everything lives in $BACKPLANE_WORKER_DIR
# (default /tmp/backplane-worker); PORTS_FROM (default 24700) is the first of the 100 ports the instances get and
# QUEUE_PORT (default 24650) the queue's.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
EXAMPLE="$REPO/examples/worker"
DIR="${BACKPLANE_WORKER_DIR:-/tmp/backplane-worker}"
MARKER="$DIR/.backplane-worker"
PORTS_FROM="${PORTS_FROM:-24700}"
QUEUE_PORT="${QUEUE_PORT:-24650}"
NODE="$(command -v node)"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() {
  echo "worker: $*" >&2
  exit 1
}

# The operator's store flags: the agent's own state dir (the CLI reaches the embedded store through the agent's
# control socket, and signs with the host key in that dir).
OP_ARGS=(--state-dir "$DIR/state")

bp() {
  # shellcheck disable=SC2016 # a literal $OP, for the reader
  printf '$ backplane %s $OP\n' "$*"
  "$NODE" "$REPO/bin/backplane.js" "$@" "${OP_ARGS[@]}"
}
bpq() { "$NODE" "$REPO/bin/backplane.js" "$@" "${OP_ARGS[@]}"; }

alive() {
  local pid="$1" stat
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat:0:1}" != Z ] && [ "${stat:0:1}" != X ]
}

agent_pid() {
  local pid
  [ -f "$DIR/agent.pid" ] || return 1
  pid="$(cat "$DIR/agent.pid")"
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" && echo "$pid"
}

need_up() {
  [ -e "$MARKER" ] || die "no worker walkthrough in $DIR: run \`$0 up\` first"
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
  for _ in $(seq 100); do
    pgrep -f -- "$DIR/state" >/dev/null || break
    sleep 0.1
  done
  rm -rf "$DIR"
}

# The example's spec with this checkout's paths and the walkthrough's ports.
spec() {
  local name="$1" file="$DIR/$1.yaml"
  sed -e "s#EXAMPLE_DIR#$EXAMPLE#g" -e "s#\[node, #[$NODE, #" -e "s#24650#$QUEUE_PORT#g" "$EXAMPLE/$name.yaml" >"$file"
  echo "$file"
}

# One line: "queue 35 waiting, 1 in flight, 0 done | worker: count 4 (scaled by ...) | 4 placed, 2 healthy".
# shellcheck disable=SC2016 # JavaScript, not shell
STATUS_JS='
let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", async () => {
  let q = "queue unreachable";
  try {
    const r = await (await fetch(process.argv[1] + "/length", { signal: AbortSignal.timeout(2000) })).json();
    q = `queue ${r.length} waiting, ${r.inFlight} in flight, ${r.done} done`;
  } catch {}
  try {
    const j = JSON.parse(s.slice(s.indexOf("{")));
    const c = j.scale ?? {};
    const healthy = j.instances.filter((i) => i.state === "healthy").length;
    const by = c.scaledBy === undefined ? "the operator'"'"'s" : `scaled by ${c.scaledBy}${c.reason === undefined ? "" : ": " + c.reason}`;
    console.log(`${q} | worker count ${c.count} (${by}) | ${j.instances.length} placed, ${healthy} healthy`);
  } catch { console.log(`${q} | worker: no status`); }
});'
status() { bpq service worker --json --events 0 2>/dev/null | "$NODE" -e "$STATUS_JS" "http://127.0.0.1:$QUEUE_PORT"; }

# Waits until the count in force is N and N worker instances are healthy, up to TIMEOUT seconds, printing each change.
wait_count() {
  local n="$1" timeout="${2:-90}" t0 line last=""
  t0=$(date +%s)
  while :; do
    line="$(status)"
    [ "$line" != "$last" ] && echo "  $(date +%T)  $line"
    last="$line"
    [[ "$line" == *"worker count $n ("*"| $n placed, $n healthy" ]] && return 0
    (($(date +%s) - t0 > timeout)) && die "the worker did not reach $n healthy instances within ${timeout}s"
    sleep 0.5
  done
}

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
    [ -e "$MARKER" ] && die "a worker walkthrough is already in $DIR: \`$0 down\` first"
    die "$DIR exists and was not made by this walkthrough; set BACKPLANE_WORKER_DIR to a new path"
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

  say "deploy the queue and one worker; the worker's spec lets its instances ask for 1 to 4 of themselves"
  local q w
  q="$(spec queue)"
  w="$(spec worker)"
  echo "\$ grep -v '^#' $w"
  grep -v '^#' "$w"
  bp deploy -f "$q" --wait 60s
  bp deploy -f "$w" --wait 60s
  wait_count 1 30
  trap - INT TERM EXIT
  echo
  echo "Up. Next: $0 push 35"
}

push() {
  need_up
  local n="${1:-35}"
  say "push $n jobs; instance 0 reads the length every second and asks for ceil(length / 10) workers, at most 4"
  echo "\$ curl -s -X POST -d $n http://127.0.0.1:$QUEUE_PORT/push"
  "$NODE" -e 'fetch(process.argv[1], { method: "POST", body: process.argv[2] }).then((r) => r.text()).then((t) => process.stdout.write(t))' "http://127.0.0.1:$QUEUE_PORT/push" "$n"
}

watch_() {
  need_up
  local secs="${1:-30}" end last="" line
  end=$(($(date +%s) + secs))
  while (($(date +%s) < end)); do
    line="$(status)"
    [ "$line" != "$last" ] && echo "  $(date +%T)  $line"
    last="$line"
    sleep 0.5
  done
}

# Instance 0 asks for N through its own port: it calls POST /v1/scale and answers with what the platform said.
ask() {
  need_up
  local n="$1" port
  # shellcheck disable=SC2016 # JavaScript, not shell
  port="$(bpq service worker --json --events 0 | "$NODE" -e '
    let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
      const j = JSON.parse(s.slice(s.indexOf("{")));
      console.log(j.instances.find((i) => i.index === 0 && i.state === "healthy")?.ports.http ?? "");
    });')"
  [ -n "$port" ] || die "no healthy worker instance 0"
  say "instance 0 asks for $n workers (POST /v1/scale {count: $n})"
  echo "\$ curl -s 'http://127.0.0.1:$port/ask?count=$n'"
  "$NODE" -e 'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t))' "http://127.0.0.1:$port/ask?count=$n&reason=by+hand"
}

case "${1:-}" in
  up) up ;;
  push) push "${2:-35}" ;;
  watch) watch_ "${2:-30}" ;;
  ask) ask "${2:?ask N}" ;;
  wait-count) need_up; wait_count "${2:?wait-count N}" "${3:-90}" ;;
  bp)
    need_up
    shift
    bp "$@"
    ;;
  down) down ;;
  all)
    "$0" up
    trap '"$0" down' EXIT
    "$0" push 35
    say "up to 4 workers (a scale plan; the version does not change)"
    "$0" wait-count 4 60
    "$0" bp service worker --events 3
    say "the queue drains; 5 s after it wants fewer, instance 0 asks for fewer, down to 1"
    "$0" wait-count 1 120
    "$0" bp service worker --events 6
    "$0" ask 9
    echo
    "$0" bp service worker --events 1
    ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
