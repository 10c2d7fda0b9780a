#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, type-checks, lints, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# etcd-server: the cluster tests start real etcd members on loopback. openssl: test certificates (https check, etcd TLS).
# etcd-client: etcdctl, to set up etcd users and roles the way docs/etcd-security.md tells operators to.
# strace: test/cli/fsync.test.ts counts the agent's fsync calls. python3-minimal: the renameat2 swap helper of the race tests.
# redis-server, redis-tools, postgresql: the shipped application backplanes are tested with the real servers.
# chromium: the dashboard is tested in a real browser (playwright-core drives it; no browser download).
apt_install etcd-server etcd-client openssl strace python3-minimal redis-server redis-tools postgresql chromium

echo "== typecheck"; npx tsc -p tsconfig.json --noEmit && npx tsc -p web/tsconfig.json --noEmit && npx tsc -p test/web/tsconfig.json --noEmit
echo "== lint"; npx eslint --max-warnings 0 .
echo "== build"; node scripts/build.mjs

shopt -s globstar nullglob
# The cluster suites that run several agents and a 3-member etcd each: alone they take 2-4 minutes; two at once on
# 2 cores starve each other's agents (missed leases, health checks timing out), which is a broken machine, not a
# broken test. They run after the rest, one at a time.
# The dashboard's browser tests (one etcd, three agents and Chromium) are of the same weight.
# The backplanes' end-to-end suites (real Redis / PostgreSQL members on three agents, kill -9 of the primary while a
# client writes) are of the same kind: their failover timings are what they prove, so they get the machine to themselves.
heavy=(test/scheduler/services-etcd.test.ts test/scheduler/rollouts-etcd.test.ts test/backplanes/redis/redis-etcd.test.ts test/backplanes/postgres/postgres-etcd.test.ts test/web/dashboard.test.ts)
files=()
for f in test/**/*.test.ts; do
  [[ " ${heavy[*]} " == *" $f "* ]] || files+=("$f")
done
if [ "$#" -gt 0 ]; then files=("$@"); heavy=(); fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
echo "== test (${#files[@]} files)"
# Timing-sensitive tests (parallelism, repair latency) share 2 cores: run files two at a time, not all at once.
node --import tsx --test --test-concurrency=2 --test-timeout=240000 --test-reporter=spec "${files[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "${#heavy[@]}" -gt 0 ]; then
  echo "== test, cluster suites one at a time (${#heavy[@]} files)"
  node --import tsx --test --test-concurrency=1 --test-timeout=600000 --test-reporter=spec "${heavy[@]}" 2>&1 | tee -a "$log"
  rc2=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] || rc=$rc2
fi
set -e
# Tests that need etcd, root or nginx skip themselves where those cannot be had; in CI everything is installed
# above, so a skip there means a missing install step, not a missing feature.
skipped=$(sed -n 's/^ℹ skipped \([0-9]*\)$/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
if [ "$rc" -eq 0 ] && [ "${CI:-}" = "true" ] && [ "${skipped:-0}" != "0" ]; then
  echo "CI: $skipped test(s) were skipped; every test must run in CI" >&2
  exit 1
fi
exit "$rc"
