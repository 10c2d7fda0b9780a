#!/usr/bin/env bash
# Runs Backplane's benchmark suite (`npm run bench -- [options]`; `--help` lists them).
# On a fresh machine it first installs the npm dependencies, builds Backplane and installs the peers (Puppet,
# Ansible, CFEngine) and GNU time from Debian. BENCH_NO_INSTALL=1 skips the Debian step.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d node_modules ]; then
  npm ci || npm install
fi

# Always rebuild: a stale dist/ would benchmark yesterday's Backplane.
npm run build

# `npm run bench -- dashboard [options]`: the dashboard's time to first render with 1,000 hosts / 10,000 instances
# (bench/dashboard.ts; Chromium from Debian, no peers needed).
if [ "${1:-}" = dashboard ]; then
  shift
  exec node --import tsx bench/dashboard.ts "$@"
fi

# `npm run bench -- scale [options]`: Backplane alone with 1k, 10k and 100k noop and file resources (validate, cold,
# converged, first change, idle agent), per resource and with each size's ratio to the smallest (bench/scale.ts).
# The 100,000-file sizes take minutes; --sizes 1000,10000 for a quick look.
if [ "${1:-}" = scale ]; then
  shift
  exec node --import tsx bench/scale.ts "$@"
fi

# `npm run bench -- api [options]`: the operator API's latency under 100 concurrent clients, beside nginx serving
# the same answers as static files (bench/api.ts).
if [ "${1:-}" = api ]; then
  shift
  command -v /usr/sbin/nginx >/dev/null 2>&1 || [ "${BENCH_NO_INSTALL:-0}" = 1 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null || true
  exec node --import tsx bench/api.ts "$@"
fi

# Debian package names of what the bench runs, keyed by the command that shows each is installed.
declare -A PACKAGE_OF=([puppet]=puppet [ansible-playbook]=ansible [cf-agent]=cfengine3 [/usr/bin/time]=time [/usr/sbin/nginx]=nginx)

missing_packages() {
  local cmd
  for cmd in "${!PACKAGE_OF[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || printf '%s\n' "${PACKAGE_OF[$cmd]}"
  done
}

# Package scripts must not start daemons: PID 1 is no init system here, and cfengine3's postinst would try to
# start cf-serverd and cf-execd. A policy-rc.d that answers 101 ("action forbidden") makes invoke-rc.d skip them;
# it is removed (or the machine's own restored) however the install ends.
install_packages() {
  local policy=/usr/sbin/policy-rc.d saved=""
  if [ -e "$policy" ]; then
    saved=$(mktemp)
    cp -p "$policy" "$saved"
  fi
  restore_policy() {
    if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  local rc=0
  # Called from an `if`, so errexit is off in here: chain the steps and keep the first failure's status.
  DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=120 "$@" || rc=$?
  restore_policy
  trap - EXIT
  return "$rc"
}

if [ "${BENCH_NO_INSTALL:-0}" != 1 ]; then
  mapfile -t need < <(missing_packages | sort -u)
  if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "bench: not root, so not installing ${need[*]}; the bench runs without them" >&2
    elif ! install_packages "${need[@]}"; then
      # A missing peer is reported in the results; it should not cost the measurements of the others.
      echo "bench: installing ${need[*]} failed; the bench runs without them" >&2
    fi
  fi
fi

exec node --import tsx bench/run.ts "$@"
