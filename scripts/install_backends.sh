#!/usr/bin/env bash
# Install the real backends the live test tier uses where this machine allows:
#  - the OpenTelemetry Collector and Jaeger, built with Go (scripts/build_go_backends.sh);
#  - Prometheus and promtool from Debian (tests/backends);
#  - Chromium from Debian (headless screenshots: tests/backends/test_phoenix.py, scripts/screenshots.py);
#  - Arize Phoenix from PyPI, in a venv of its own outside the repository (its dependencies are not the
#    project's): $COREVITAL_PHOENIX_VENV, default ~/.cache/corevital-otel/backends/phoenix.
# Idempotent and quick when they are there already. A slow or unreachable mirror must not fail CI: it is
# reported, and the tests that need the backend skip, saying why.
set -uo pipefail

PHOENIX_VERSION="20.26.1"
PHOENIX_VENV="${COREVITAL_PHOENIX_VENV:-$HOME/.cache/corevital-otel/backends/phoenix}"

bash "$(dirname "$0")/build_go_backends.sh"

sudo=""
apt_usable=1
if ! command -v apt-get >/dev/null 2>&1; then
    apt_usable=0
elif [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        apt_usable=0
    fi
fi
apt_updated=0

apt_install() {  # apt_install <what> <packages...>
    local what="$1"
    shift
    if [ "$apt_usable" -eq 0 ]; then
        echo "install_backends: no apt-get as root here; install $what yourself" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        # Bounded: a stuck mirror costs minutes, not the CI run.
        if ! timeout 300 $sudo apt-get update -qq; then
            echo "install_backends: apt-get update failed or timed out; trying with the lists already here" >&2
        fi
        apt_updated=1
    fi
    # No recommends: only what the tests run.
    timeout 600 $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "install_backends: $(prometheus --version 2>&1 | head -n1)"
elif apt_install prometheus prometheus; then
    echo "install_backends: $(prometheus --version 2>&1 | head -n1)"
    # The package's service is not wanted: the tests start their own Prometheus on loopback.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
else
    echo "install_backends: could not install prometheus; its live tests will skip" >&2
fi

if command -v chromium >/dev/null 2>&1; then
    echo "install_backends: $(chromium --version 2>/dev/null | head -n1)"
elif apt_install chromium chromium; then
    echo "install_backends: $(chromium --version 2>/dev/null | head -n1)"
else
    echo "install_backends: could not install chromium; screenshots will be skipped" >&2
fi

# Phoenix: skipped when this version is there already (the venv is a cache, outside the repository).
if [ -x "$PHOENIX_VENV/bin/phoenix" ] \
    && compgen -G "$PHOENIX_VENV/lib/python3*/site-packages/arize_phoenix-$PHOENIX_VERSION.dist-info" >/dev/null; then
    echo "install_backends: arize-phoenix $PHOENIX_VERSION in $PHOENIX_VENV"
else
    started=$(date +%s)
    rm -rf "$PHOENIX_VENV"
    if python3 -m venv "$PHOENIX_VENV" \
        && timeout 900 "$PHOENIX_VENV/bin/python" -m pip install -q --upgrade pip \
        && timeout 900 "$PHOENIX_VENV/bin/python" -m pip install -q "arize-phoenix==$PHOENIX_VERSION"; then
        echo "install_backends: arize-phoenix $PHOENIX_VERSION in $PHOENIX_VENV ($(( $(date +%s) - started )) s)"
    else
        rm -rf "$PHOENIX_VENV"
        echo "install_backends: could not install arize-phoenix; its live tests will skip" >&2
    fi
fi
exit 0
