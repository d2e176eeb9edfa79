#!/usr/bin/env bash
# Builds everything scripts/device-report.sh runs, here (where Rust and the crates are), and
# lists it, so the bundle can be carried to a GPU machine that has neither a toolchain nor a
# network. The bundle is the repository's working tree plus:
#   target/release/vlsa                         the CLI (info, profile matmul/em/model)
#   target/release/examples/attention_time      attention forward/backward timing
#   target/release/examples/model_time          whole-model timing (wall clock)
#   target/device-tests/<name>                  the kernel tests and the PyTorch model fixtures
#   target/device-tests/LIST                    "<name> <path>" per test binary
# Usage: scripts/build-device-bundle.sh [--tar OUT.tar.gz]
# Test binaries find their data (tests/fixtures, configs) through the source path they were
# built at; device-report.sh links that path to the bundle when it differs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every kernel family's tests (tests/kernel_<family>.rs) and the PyTorch model fixtures.
present=()
for f in tests/kernel_*.rs tests/model_fixtures.rs; do
    present+=("$(basename "$f" .rs)")
done

cargo build --release --bin vlsa --example attention_time --example model_time
args=()
for t in "${present[@]}"; do args+=(--test "$t"); done
mkdir -p target/device-tests
: > target/device-tests/LIST
# cargo names test binaries <name>-<hash>; its JSON messages say which file is which.
cargo test --release --no-run "${args[@]}" --message-format=json 2>/dev/null |
    grep '"reason":"compiler-artifact"' | grep '"test":true' |
    sed -n 's/.*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p' |
    while read -r name exe; do
        cp "$exe" "target/device-tests/$name"
        echo "$name target/device-tests/$name" >> target/device-tests/LIST
    done
pwd > target/device-tests/BUILD_ROOT

echo "device bundle (relative to $(pwd)):"
ls -l target/release/vlsa target/release/examples/attention_time target/release/examples/model_time
cat target/device-tests/LIST
if [[ "${1:-}" == "--tar" ]]; then
    out="${2:?--tar needs an output file}"
    tar czf "$out" --exclude=./target --exclude=./.git . \
        target/release/vlsa target/release/examples/attention_time target/release/examples/model_time \
        target/device-tests
    echo "wrote $out"
fi
