#!/usr/bin/env bash
# Everything opencone needs on a fresh Debian machine: system packages (Chromium
# from Debian, Xvfb and friends for desktops, bubblewrap and e2fsprogs for exec) and a Python
# virtual environment in .venv. Safe to run again: it only installs what is missing.
#   scripts/setup.sh          server dependencies, with the MCP server (the `mcp` extra)
#   scripts/setup.sh --test   plus the test tools (pytest, the official tzafon SDK)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium fonts-liberation xvfb x11-utils x11-xserver-utils xdotool openbox xterm bubblewrap e2fsprogs
              ca-certificates curl python3-venv)
EXTRA="[mcp]"  # /mcp works from the README's first command
[ "${1:-}" = "--test" ] && EXTRA="[test]"
# the tests start a throwaway PostgreSQL server (tests/postgres.py) for the store on PostgreSQL and the fleet
[ "${1:-}" = "--test" ] && APT_PACKAGES+=(postgresql)
# and browser computers on Debian's headless shell (OPENCONE_BROWSER_CHROMIUM_PATH, tests/test_headless_shell.py)
[ "${1:-}" = "--test" ] && APT_PACKAGES+=(chromium-headless-shell)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt: another apt may hold the dpkg lock for a while on a new machine, so retry
apt_install() {
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"; then
      return 0
    fi
    echo "apt-get install failed (attempt $attempt); retrying in 6 s" >&2
    sleep 6
    as_root apt-get update -q || true
  done
  return 1
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -q
  apt_install "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# reinstall only when the declared dependencies change
stamp=".venv/.opencone-installed${EXTRA}"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${EXTRA}"
  echo "$want" > "$stamp"
fi

# the CDP tests also drive Puppeteer when node and npm exist (puppeteer-core only: no browser download)
if [ "${1:-}" = "--test" ] && command -v node >/dev/null && command -v npm >/dev/null; then
  if [ ! -d tests/node/node_modules/puppeteer-core ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error) \
      || echo "npm ci in tests/node failed; the Puppeteer test will be skipped" >&2
  fi
fi

# the Notte clients, test tools only (tests/test_notte*.py), each in a virtual environment of its own:
# notte 1.2.1 pins pillow<12 and pulls litellm and Playwright, which the project's environment must not take
notte_env() {  # name, requirement
  local dir=".venv/notte-$1" want="$2"
  if [ ! -f "$dir/.installed" ] || [ "$(cat "$dir/.installed")" != "$want" ]; then
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q "$want"
    echo "$want" > "$dir/.installed"
  fi
}
if [ "${1:-}" = "--test" ]; then
  notte_env seed "notte==1.2.1" & seed=$!
  notte_env sdk "notte-sdk==1.10.0" & sdk=$!
  wait "$seed"
  wait "$sdk"
fi
