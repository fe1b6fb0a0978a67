#!/usr/bin/env bash
# Headless Chromium for the console's browser tests: Debian's package, installed if missing.
#
#   scripts/chromium.sh     # install if needed, print the browser's path
#
# GATEWAY_TEST_CHROMIUM names another Chromium or Chrome binary to use instead.
set -euo pipefail

browser=${GATEWAY_TEST_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$browser" ]; then
    echo "installing Chromium (Debian package chromium)" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        chromium fonts-dejavu-core >&2
fi
"$browser" --version >&2
echo "$browser"
