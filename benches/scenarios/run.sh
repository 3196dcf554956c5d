#!/usr/bin/env bash
# The simulator's benchmark: a release build runs benches/scenarios/month-50k.toml, or the same
# scenario cut to DURATION (`benches/scenarios/run.sh 1d`), and prints the wall time, setup
# (generating 50,000 packages with real artifacts and signatures) included: it is what a
# maintainer waits for. `run.sh 1m` times the setup alone (two cycles).
set -euo pipefail
cd "$(dirname "$0")/../.."
duration="${1:-30d}"
cargo build --release --quiet --locked
scenario="$(mktemp -d)/month-50k-${duration}.toml"
sed -e "s/^duration = \"30d\"/duration = \"${duration}\"/" \
    -e "s|^policies = \"../../policies\"|policies = \"$(pwd)/policies\"|" \
    benches/scenarios/month-50k.toml > "$scenario"
start=$(date +%s.%N)
# A cut run misses the later incidents, so its expectations may fail: the time still counts.
status=0
./target/release/mapek simulate "$scenario" || status=$?
end=$(date +%s.%N)
echo "expectations: exit ${status} (0: all held)"
echo "simulate ${duration} of 50,000 packages at a 1-minute tick: $(echo "$end - $start" | bc) s wall"
