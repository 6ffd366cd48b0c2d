#!/usr/bin/env bash
# Build the Go backends of the live test tiers: otelcol-corevital (collector-config/builder-config.yaml,
# with the OpenTelemetry Collector Builder) and Jaeger v2 (github.com/jaegertracing/jaeger/cmd/jaeger).
#
# Binaries go OUTSIDE the repository, one folder per version, so a fresh clone (CI) reuses them:
#   $COREVITAL_BACKENDS_DIR/otelcol-corevital-<dist.version>-<manifest hash>/otelcol-corevital
#   $COREVITAL_BACKENDS_DIR/jaeger-<JAEGER_VERSION>/jaeger
# (default $HOME/.cache/corevital-otel/backends; tests/backends/go_backends.py looks there), and links
# $COREVITAL_BACKENDS_DIR/bin/{otelcol-corevital,jaeger} to the builds of this checkout's versions. The hash is
# of the manifest without its comment lines, so adding a component rebuilds. A binary that is already
# there for that version is not rebuilt; Go's module and build caches make a rebuild after a
# version change quicker. A build that fails writes BUILD-FAILED beside where the binary would be (the
# command and the error), the tests that need it skip with that text, and this script still exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/backends.env

backends="${COREVITAL_BACKENDS_DIR:-$HOME/.cache/corevital-otel/backends}"
manifest="collector-config/builder-config.yaml"
collector_version="$(sed -n 's/^  version: *//p' "$manifest" | head -n1)"
manifest_hash="$(grep -v '^[[:space:]]*#' "$manifest" | sha256sum | cut -c1-12)"
build_timeout="${COREVITAL_GO_BUILD_TIMEOUT:-1500}"  # seconds per build: CI has 90 minutes in all

if ! command -v go >/dev/null 2>&1; then
    echo "build_go_backends: no go toolchain here; the Collector and Jaeger tiers will skip" >&2
    exit 0
fi

# link BINARY: $backends/bin/<its name> -> BINARY, for people starting the stack by hand.
link() {
    mkdir -p "$backends/bin"
    ln -sfn "$1" "$backends/bin/$(basename "$1")"
}

# run_build NAME COMMAND...: runs the build, on failure writes BUILD-FAILED in $out with the error.
run_build() {
    local name="$1"; shift
    local log="$out/build.log"
    local started=$SECONDS
    echo "build_go_backends: building $name in $out (log: $log)"
    timeout "$build_timeout" "$@" >"$log" 2>&1
    local status=$?
    if [ "$status" -eq 0 ]; then
        rm -f "$out/BUILD-FAILED"
        echo "build_go_backends: $name built in $((SECONDS - started)) s"
        return 0
    fi
    {
        echo "command: $*"
        echo "exit status: $status after $((SECONDS - started)) s (124: timed out)"
        tail -n 40 "$log"
    } >"$out/BUILD-FAILED"
    echo "build_go_backends: $name FAILED; see $out/BUILD-FAILED" >&2
    return 1
}

# already_built BINARY: true (and linked) when $out holds BINARY; else makes $out for the build.
already_built() {
    if [ -x "$out/$1" ]; then
        echo "build_go_backends: $1 already built ($out)"
        link "$out/$1"
        return 0
    fi
    mkdir -p "$out"
    return 1
}

build_collector() {
    out="$backends/otelcol-corevital-$collector_version-$manifest_hash"
    already_built otelcol-corevital && return 0
    local work; work="$(mktemp -d)"
    # The builder itself is a Go program: installed into the version's folder, not on PATH.
    GOBIN="$out/tools" go install "go.opentelemetry.io/collector/cmd/builder@v$collector_version" \
        >"$out/builder-install.log" 2>&1 || { cp "$out/builder-install.log" "$out/BUILD-FAILED"; return 1; }
    # The manifest's output_path is relative to the checkout: build in a scratch folder instead.
    sed "s#^  output_path: .*#  output_path: $work#" "$manifest" >"$work/manifest.yaml"
    if run_build "otelcol-corevital $collector_version" "$out/tools/builder" --config "$work/manifest.yaml"; then
        install -m 0755 "$work/otelcol-corevital" "$out/otelcol-corevital" && link "$out/otelcol-corevital"
    fi
    rm -rf "$work"
}

build_jaeger() {
    out="$backends/jaeger-$JAEGER_VERSION"
    already_built jaeger && return 0
    local work; work="$(mktemp -d)"
    # Jaeger's go.mod has replace directives, so `go install module@version` is refused: build the
    # command as a tool dependency of a throwaway module instead.
    (
        cd "$work" && go mod init corevital.local/jaeger-build >/dev/null 2>&1 &&
            run_build "jaeger $JAEGER_VERSION" sh -c \
                "go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION &&
                 go build -trimpath -o '$work/jaeger' github.com/jaegertracing/jaeger/cmd/jaeger"
    ) && install -m 0755 "$work/jaeger" "$out/jaeger" && link "$out/jaeger"
    rm -rf "$work"
}

build_collector
build_jaeger
exit 0
