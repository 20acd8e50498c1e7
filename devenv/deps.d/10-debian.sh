#!/usr/bin/env bash
# Debian packages listed in devenv/debian-packages.txt; apt-get runs only when one is missing.
set -euo pipefail
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' devenv/debian-packages.txt)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "10-debian: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
