#!/usr/bin/env bash
# `make deps`: the Debian packages the tests and benchmarks run for real. Installs the missing
# ones with apt-get when it may (as root, or with password-less sudo); otherwise prints the one
# command to run and fails.
set -euo pipefail

packages=(
  influxdb                    # statistics sink (tests/influx_server.py)
  nginx wrk iproute2          # make bench: upstream, load generator, ss
  chromium chromium-driver    # a real browser calls the relay as Threema Web does
  redis-server nghttp2-server nghttp2-proxy h2o apache2 haproxy   # real servers and proxies
  curl                        # the sandbox test pastes its printed commands into a shell
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
((${#missing[@]})) || exit 0

command="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "make deps: missing Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo sh -c '$command'" >&2
  exit 1
fi

echo "make deps: installing ${missing[*]}"
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq)
# apt's chatter is shown only when it fails
if ! output=$("${apt[@]}" update 2>&1 && "${apt[@]}" install --no-install-recommends \
  "${missing[@]}" 2>&1); then
  echo "$output" >&2
  exit 1
fi
