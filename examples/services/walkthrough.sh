#!/usr/bin/env bash
# The service backplane on one machine: a one-member etcd on loopback, three agents (h1, h2, h3) with declared
# capacity, the web service (examples/services/web.yaml, six instances) and a small proxy in h1's own graph whose
# upstream list follows web's healthy instances. Run as root (the agents manage processes and cgroups).
#
#   examples/services/walkthrough.sh up          # etcd, cluster init, three agents, deploy web; wait until healthy
#   examples/services/walkthrough.sh kill h2     # kill -9 an agent; time until its instances are healthy elsewhere
#   examples/services/walkthrough.sh start h2    # start a stopped or killed agent again
#   examples/services/walkthrough.sh drain h3    # move every instance off h3, within web's disruption budget
#   examples/services/walkthrough.sh undrain h3
#   examples/services/walkthrough.sh scale web 3 # scale down: the newest instances stop first
#   examples/services/walkthrough.sh status      # services, hosts, the proxy's upstream list
#   examples/services/walkthrough.sh bp ARGS...  # any backplane command, as the operator (h1)
#   examples/services/walkthrough.sh env         # eval "$(... env)" gives this shell `backplane` and $OP
#   examples/services/walkthrough.sh down        # stop everything and delete the walkthrough's directory
#   examples/services/walkthrough.sh all         # up, kill h2, start h2, drain h3, scale web 3, down
#
# Everything lives in $BACKPLANE_WALKTHROUGH_DIR (default /tmp/backplane-walkthrough): etcd's data, the agents'
# state dirs, graphs, logs and pids, so any shell can run the next step. PROXY_PORT (default 8080), ETCD_PORT (default:
# a free one) and PORTS_FROM (default 24100: the agents' dynamic port ranges are the 300 ports from there) choose
# ports. Ctrl-C or an error during `up` stops everything it started.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${BACKPLANE_WALKTHROUGH_DIR:-/tmp/backplane-walkthrough}"
MARKER="$DIR/.backplane-walkthrough"
CLUSTER=walkthrough
HOSTS=(h1 h2 h3)
declare -A CAPACITY=([h1]="cpu=3,memory=1G" [h2]="cpu=2,memory=1G" [h3]="cpu=2,memory=1G")
# Agents sharing a machine need dynamic port ranges of their own (separate machines would not).
PORTS_FROM="${PORTS_FROM:-24100}"
declare -A PORTS=([h1]=$PORTS_FROM-$((PORTS_FROM + 99)) [h2]=$((PORTS_FROM + 100))-$((PORTS_FROM + 199)) [h3]=$((PORTS_FROM + 200))-$((PORTS_FROM + 299)))
declare -A ZONE=([h1]=a [h2]=b [h3]=c)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() {
  echo "walkthrough: $*" >&2
  exit 1
}

# The operator's store flags (h1 holds the cluster's CA and may deploy), as written to $DIR/env by `up`.
load_env() {
  [ -e "$MARKER" ] || die "no walkthrough in $DIR: run \`$0 up\` first"
  # shellcheck source=/dev/null
  . "$DIR/env"
}

# Runs a backplane command as the operator, printing it first (with $OP for the store flags).
bp() {
  # shellcheck disable=SC2016 # a literal $OP, for the reader
  printf '$ backplane %s $OP\n' "$*"
  node "$REPO/bin/backplane.js" "$@" "${OP_ARGS[@]}"
}
# The same, quietly, for polling.
bpq() { node "$REPO/bin/backplane.js" "$@" "${OP_ARGS[@]}"; }

free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }

# Alive and not a zombie (PID 1 may reap orphans late, so kill -0 alone is not enough).
alive() {
  local pid="$1" stat
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat:0:1}" != Z ] && [ "${stat:0:1}" != X ]
}

# The pid recorded for NAME (an agent or etcd), if that process still runs and is ours (its command line names
# our directory, so a reused pid is never taken for it).
pid_of() {
  local f="$DIR/$1.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" && echo "$pid"
}

stop_pid() {
  local name="$1" pid
  pid="$(pid_of "$name")" || return 0
  kill -CONT "$pid" 2>/dev/null || true # a frozen (kill -STOP) agent handles SIGTERM only once continued
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# Stops the agents, then etcd; the instances stop by their fence once their agent is gone; deletes $DIR.
down() {
  [ -e "$MARKER" ] || { [ -e "$DIR" ] && die "$DIR was not made by this walkthrough; not touching it"; return 0; }
  echo "stopping the agents and etcd, deleting $DIR"
  local h stoppers=()
  for h in "${HOSTS[@]}"; do
    stop_pid "$h" &
    stoppers+=($!)
  done
  wait "${stoppers[@]}"
  # An instance outlives its agent by at most its fence (half the lease TTL, at least 2 s): its watchdog, whose
  # command line names the agent's heartbeat file in $DIR, kills it and then exits.
  for _ in $(seq 100); do
    pgrep -f -- "$DIR/state-" >/dev/null || break
    sleep 0.1
  done
  stop_pid etcd
  # Each instance served its own directory: remove those this walkthrough made.
  find /tmp -maxdepth 1 -name 'web-web.*' -newer "$MARKER" -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$DIR" # etcd preallocates ~120 MB of WAL: never leave its data dir behind
}

start_agent() {
  local h="$1" join=()
  [ "$h" = h1 ] || join=(--join-token-file "$DIR/join-token")
  local args=(run -f "$DIR/$h.yaml" --hostname "$h" --state-dir "$DIR/state-$h" --capacity "${CAPACITY[$h]}"
    --ports "${PORTS[$h]}" --label "zone=${ZONE[$h]}" --etcd "$ETCD_URL" --cluster "$CLUSTER" "${join[@]}")
  echo "\$ backplane ${args[*]} &"
  # Its own session, so that a Ctrl-C meant for a later command does not reach it; $! is the agent itself. The
  # system's PATH first, as a service manager would give it (not a version manager's shims: pyenv's python3 shim
  # costs ~0.6 s of cpu per start).
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH" setsid node "$REPO/bin/backplane.js" "${args[@]}" >>"$DIR/$h.log" 2>&1 </dev/null &
  echo $! >"$DIR/$h.pid"
}

wait_joined() {
  local h="$1" n="$2"
  for _ in $(seq 300); do
    [ "$(grep -cE 'joined cluster|cluster store: ' "$DIR/$h.log" 2>/dev/null)" -ge "$n" ] && return 0
    pid_of "$h" >/dev/null || { tail -20 "$DIR/$h.log" >&2; die "agent $h exited"; }
    sleep 0.1
  done
  tail -20 "$DIR/$h.log" >&2
  die "agent $h did not join within 30 s"
}

# web's instances as "WANTED HEALTHY-OFF-HOST TOTAL ON-HOST HEALTHY" (from `backplane service web --json`).
web_counts() {
  # shellcheck disable=SC2016 # JavaScript, not shell
  bpq service web --json | node -e '
    let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
      const j = JSON.parse(s), host = process.argv[1];
      const healthy = new Set(j.instances.filter((i) => i.state === "healthy" && i.host !== host).map((i) => i.index));
      const on = j.instances.filter((i) => i.host === host).length;
      const all = new Set(j.instances.filter((i) => i.state === "healthy").map((i) => i.index)).size;
      console.log(`${j.spec?.count ?? "?"} ${healthy.size} ${j.instances.length} ${on} ${all}`);
    });' "${1:-}"
}

# Waits until every wanted instance of web is healthy, none on HOST (if given) and no extra ones are left; prints how
# long that took and the lowest healthy count seen meanwhile.
wait_web() {
  local host="${1:-}" timeout="${2:-60}" t0 ms counts wanted healthy total on all low=""
  t0=$(date +%s%N)
  while :; do
    counts="$(web_counts "$host" 2>/dev/null || echo "? 0 0 0 0")"
    read -r wanted healthy total on all <<<"$counts"
    if [ "$wanted" != "?" ] && { [ -z "$low" ] || [ "$all" -lt "$low" ]; }; then low="$all"; fi
    [ "$wanted" != "?" ] && [ "$healthy" = "$wanted" ] && [ "$total" = "$wanted" ] && [ "$on" = 0 ] && break
    if (($(date +%s%N) - t0 > timeout * 1000000000)); then
      bp service web || true
      die "web did not settle within ${timeout}s"
    fi
    sleep 0.1
  done
  ms=$((($(date +%s%N) - t0) / 1000000))
  printf 'all %s instances of web healthy%s after %d.%01ds (lowest healthy count seen meanwhile: %s)\n' \
    "$wanted" "${host:+, none on $host,}" $((ms / 1000)) $((ms % 1000 / 100)) "$low"
}

show_upstreams() {
  echo "\$ cat $DIR/upstreams        # h1's proxy reads this; a template with services: [web] writes it"
  cat "$DIR/upstreams" 2>/dev/null || true
}

status() {
  bp services
  bp hosts
  show_upstreams
}

# On an error during `up`: show the last log lines, then stop everything.
up_failed() {
  local rc=$?
  [ "$rc" = 0 ] && return
  echo "failed (exit $rc): the last lines of each log, then cleaning up"
  tail -n 5 "$DIR"/*.log 2>/dev/null || true
  down
}

up() {
  command -v etcd >/dev/null || die "etcd is not installed (apt-get install etcd-server)"
  [ "$(id -u)" = 0 ] || die "run as root: agents supervise processes and set cgroup limits"
  if [ -e "$DIR" ]; then
    [ -e "$MARKER" ] && die "a walkthrough is already in $DIR: \`$0 down\` first"
    die "$DIR exists and was not made by this walkthrough; set BACKPLANE_WALKTHROUGH_DIR to a new path"
  fi
  [ -f "$REPO/dist/backplane.mjs" ] || (cd "$REPO" && node scripts/build.mjs)
  local proxy_port="${PROXY_PORT:-8080}" etcd_port="${ETCD_PORT:-$(free_port)}" peer_port
  peer_port="$(free_port)"
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  touch "$MARKER"
  trap 'trap - EXIT; echo; echo "stopped: cleaning up"; down; exit 130' INT TERM
  trap up_failed EXIT

  ETCD_URL="http://127.0.0.1:$etcd_port"
  local peer="http://127.0.0.1:$peer_port"
  say "etcd: one member on $ETCD_URL (fast timings: ready in ~0.2 s)"
  echo "\$ etcd --data-dir $DIR/etcd --listen-client-urls $ETCD_URL ... --heartbeat-interval 25 --election-timeout 250 &"
  setsid etcd --name walkthrough --data-dir "$DIR/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "walkthrough=$peer" --initial-cluster-token "walkthrough-$$-$RANDOM" \
    --heartbeat-interval 25 --election-timeout 250 --logger zap --log-level error >"$DIR/etcd.log" 2>&1 </dev/null &
  echo $! >"$DIR/etcd.pid"
  for _ in $(seq 100); do
    curl -s -m 1 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"' && break
    pid_of etcd >/dev/null || { cat "$DIR/etcd.log" >&2; die "etcd failed to start"; }
    sleep 0.1
  done
  curl -s -m 1 "$ETCD_URL/health" | grep -q '"health":"true"' || die "etcd is not healthy after 10 s"

  cat >"$DIR/env" <<EOF
ETCD_URL=$ETCD_URL
PROXY_PORT=$proxy_port
OP_ARGS=(--etcd $ETCD_URL --cluster $CLUSTER --state-dir $DIR/state-h1)
EOF
  load_env

  say "the cluster: h1 makes its CA and a join token for h2 and h3"
  echo "OP=\"${OP_ARGS[*]}\"   # the store flags every operator command below gets"
  echo "\$ backplane cluster init --hostname h1 \$OP"
  node "$REPO/bin/backplane.js" cluster init --hostname h1 "${OP_ARGS[@]}"
  echo "\$ backplane hosts token --uses 10 \$OP > $DIR/join-token"
  (umask 077 && node "$REPO/bin/backplane.js" hosts token --uses 10 "${OP_ARGS[@]}" >"$DIR/join-token")

  # h1's own graph: the proxy, and its upstream list rendered from web's healthy instances (service discovery).
  if [ "${WALKTHROUGH_WEB:-1}" = 0 ]; then
    echo 'resources: []' >"$DIR/h1.yaml"
  else
    cat >"$DIR/h1.yaml" <<EOF
resources:
  - kind: template
    name: $DIR/upstreams
    services: [web]
    template: "{% for i in services.web %}{{ i.address }}:{{ i.ports.http }}\n{% endfor %}"
  - kind: svc
    name: proxy
    cmd: [$(command -v node), $REPO/examples/services/proxy.mjs]
    env: { PORT: "$proxy_port", UPSTREAMS: $DIR/upstreams }
    health: { http: "http://127.0.0.1:$proxy_port/health" }
    onAgentExit: stop
EOF
  fi
  echo 'resources: []' >"$DIR/h2.yaml"
  echo 'resources: []' >"$DIR/h3.yaml"

  say "three agents, each with declared capacity, its own dynamic port range and a zone label"
  echo "\$ cat $DIR/h1.yaml"
  cat "$DIR/h1.yaml"
  local h
  for h in "${HOSTS[@]}"; do start_agent "$h"; done
  for h in "${HOSTS[@]}"; do wait_joined "$h" 1; done

  # WALKTHROUGH_WEB=0: the cluster only (examples/backplanes/redis.sh deploys its own object on it).
  if [ "${WALKTHROUGH_WEB:-1}" = 0 ]; then
    trap - INT TERM EXIT
    return 0
  fi
  say "deploy web: six instances; --wait returns once all are healthy"
  (cd "$REPO" && bp deploy -f examples/services/web.yaml --wait 90s)
  wait_web "" 60
  for _ in $(seq 50); do
    [ "$(grep -c . "$DIR/upstreams" 2>/dev/null)" = 6 ] && break
    sleep 0.1
  done
  status
  echo "\$ curl -s 127.0.0.1:$proxy_port/   # twice: round robin over the instances"
  curl -s -m 5 "127.0.0.1:$proxy_port/" | tail -1 || true
  curl -s -m 5 "127.0.0.1:$proxy_port/" | tail -1 || true
  trap - INT TERM EXIT
  cat <<EOF

Up. Next: $0 kill h2 | drain h3 | scale web 3 | status | down
In another shell: eval "\$($0 env)"; backplane service web \$OP
EOF
}

kill_agent() {
  local h="$1" pid
  pid="$(pid_of "$h")" || die "agent $h is not running"
  say "kill -9 $h (pid $pid): its lease expires, and its instances are placed elsewhere once fenced"
  echo "\$ kill -9 $pid"
  kill -KILL "$pid"
  wait_web "$h" 60
  bp service web --events 5
  show_upstreams
}

case "${1:-}" in
  up) up ;;
  kill)
    load_env
    kill_agent "${2:?which agent: h1, h2 or h3}"
    ;;
  start)
    load_env
    h="${2:?which agent: h1, h2 or h3}"
    pid_of "$h" >/dev/null && die "agent $h is already running"
    say "start $h again: it runs nothing it is no longer assigned"
    n="$(grep -cE 'joined cluster|cluster store: ' "$DIR/$h.log" 2>/dev/null || true)"
    start_agent "$h"
    wait_joined "$h" $((n + 1))
    bp hosts
    ;;
  drain)
    load_env
    h="${2:?which host}"
    say "drain $h: its instances move, at most update.maxParallel at a time, within web's disruption budget (maxUnavailable)"
    bp drain "$h"
    wait_web "$h" 120
    bp hosts
    show_upstreams
    ;;
  undrain)
    load_env
    bp undrain "${2:?which host}"
    ;;
  scale)
    load_env
    say "scale ${2:?which service} to ${3:?how many}: scaling down stops the newest instances first"
    bp scale "$2" "$3"
    [ "$2" = web ] && wait_web "" 60
    bp service "$2" --events 3
    show_upstreams
    ;;
  status)
    load_env
    status
    ;;
  bp)
    load_env
    shift
    bp "$@"
    ;;
  env)
    load_env
    echo "alias backplane='node $REPO/bin/backplane.js'; OP='${OP_ARGS[*]}'"
    ;;
  down) down ;;
  all)
    "$0" up
    trap '"$0" down' EXIT
    "$0" kill h2
    "$0" start h2
    "$0" drain h3
    "$0" scale web 3
    ;;
  *)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
