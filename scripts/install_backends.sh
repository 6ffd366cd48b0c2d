#!/usr/bin/env bash
# Install the real backends the live test tier uses where this machine allows: the Collector and Jaeger
# built with Go (scripts/build_go_backends.sh), Prometheus and promtool from Debian (tests/backends).
# Idempotent and quick when they are there already. A slow or unreachable mirror must not fail CI: it is
# reported, and the tests that need the binaries skip, saying why.
set -uo pipefail

bash "$(dirname "$0")/build_go_backends.sh"

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "install_backends: $(prometheus --version 2>&1 | head -n1)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_backends: no apt-get here; install prometheus (with promtool) yourself" >&2
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "install_backends: not root and no passwordless sudo; skipping" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Bounded: a stuck mirror costs minutes, not the CI run.
if ! timeout 300 $sudo apt-get update -qq; then
    echo "install_backends: apt-get update failed or timed out; trying with the lists already here" >&2
fi
# No recommends: node-exporter and friends are not needed, only the server and promtool.
if timeout 600 $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
    echo "install_backends: $(prometheus --version 2>&1 | head -n1)"
else
    echo "install_backends: could not install prometheus; its live tests will skip" >&2
fi
# The package's service is not wanted: the tests start their own Prometheus on loopback.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
exit 0
