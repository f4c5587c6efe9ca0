#!/usr/bin/env bash
# Headless Chromium for the browser tests, from Debian (no Playwright browser download).
# Idempotent: does nothing when /usr/bin/chromium is already there. CI runs it as root.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -d /usr/share/fonts/truetype/noto ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser: /usr/bin/chromium is missing and we are not root; install 'chromium' with apt-get" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core fonts-noto-color-emoji >/dev/null
/usr/bin/chromium --version
