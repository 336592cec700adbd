#!/usr/bin/env bash
# Installs the Debian packages that the browser and PostgreSQL tests use, when they are missing
# and we are root with apt-get. Never fails the build: the tests that need a missing tool skip
# and say why.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1 \
  || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${need[*]} (not root or no apt-get); their tests will skip" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
(apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}") >/tmp/system-deps.log 2>&1 \
  || echo "system-deps: apt-get failed (see /tmp/system-deps.log); their tests will skip" >&2
exit 0
