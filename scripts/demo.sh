#!/usr/bin/env bash
# The quick-start demo: applies examples/demo.yaml on this machine and keeps it converged until Ctrl-C, with the
# dashboard and API on https://127.0.0.1:8443/ (DEMO_API=HOST:PORT to move it, DEMO_API= for none).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
node scripts/build.mjs
api="${DEMO_API-127.0.0.1:8443}"
args=()
if [ -n "$api" ]; then
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  # A throwaway self-signed certificate for the demo's dashboard, kept where only this user can read it.
  tls="${TMPDIR:-/tmp}/backplane-demo-tls-$(id -u)"
  mkdir -p "$tls" && chmod 700 "$tls"
  if [ ! -s "$tls/api.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$tls/api.key" -out "$tls/api.crt" 2>/dev/null
    chmod 600 "$tls/api.key"
  fi
  args=(--api-listen "$api" --api-tls-cert "$tls/api.crt" --api-tls-key "$tls/api.key")
  cat >&2 <<MSG
== dashboard: https://$api/ (a self-signed certificate: accept it in the browser)
   sign in with a token; in another terminal:  node bin/backplane.js token create --name me --role admin
   and see this agent from the CLI:            node bin/backplane.js status
MSG
fi
exec node bin/backplane.js run --file examples/demo.yaml "${args[@]}" "$@"
