#!/usr/bin/env bash
# Installs the headless browser the report's browser tests drive (tests/test_report_browser.py):
# Chromium from the OS packages. Idempotent: does nothing when a Chromium is already on PATH.
# Playwright itself comes with the test extra (pip install -e '.[test]') and drives this binary;
# it never downloads a browser of its own.
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then
        echo "browser: $(command -v "$b") ($("$b" --version 2>/dev/null | head -1))"
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser: no Chromium and no apt-get; the browser tests will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "browser: installed $(chromium --version 2>/dev/null | head -1)"
