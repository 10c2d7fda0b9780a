# Sourced by the demo, test and bench scripts: installs what they need on a fresh machine, and nothing when present.
need_npm=0
if [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ]; then need_npm=1
elif [ package-lock.json -nt node_modules/.package-lock.json ]; then need_npm=1; fi
if [ "$need_npm" = 1 ]; then
  echo "== installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi

# Debian packages the tests use. apt-get is slow (1-6 s a call), so only when something is missing.
apt_install() {
  local missing=()
  # A fresh machine may have no package lists at all; pkg tests and `apt-get install` need them.
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null && ! compgen -G '/var/lib/apt/lists/*_Packages.*' >/dev/null; then
    local sudo0=""; [ "$(id -u)" -ne 0 ] && sudo0="sudo"
    echo "== apt-get update (no package lists yet)"
    $sudo0 apt-get update -qq -o DPkg::Lock::Timeout=120 >/dev/null
  fi
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "== installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq -o DPkg::Lock::Timeout=120 >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=120 --no-install-recommends "${missing[@]}" >/dev/null
}
