#!/usr/bin/env bash
# Debian's Chromium + ChromeDriver for the browser test of the Airflow UI view
# (tests/e2e/test_ui_view.py). Installs them only when missing; needs root (CI and these machines
# run as root) or passwordless sudo.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium chromium-driver >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }
/usr/bin/chromium --version
