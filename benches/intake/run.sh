#!/usr/bin/env bash
# Sustained telemetry intake over loopback, measured with wrk: a release build of mapek serving
# POST /v1/events on a fresh SQLite store, wrk posting bodies of LINES events on CONNECTIONS
# connections for DURATION, then what the daemon counted as accepted against what is stored.
#
#   benches/intake/run.sh            # defaults: 1000 events a request, 4 connections, 30s
#   LINES=500 CONNECTIONS=8 DURATION=60s benches/intake/run.sh
#
# Needs wrk (Debian: apt-get install wrk) and python3 (to read the SQLite store).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
LINES=${LINES:-1000} CONNECTIONS=${CONNECTIONS:-4} DURATION=${DURATION:-30s} THREADS=${THREADS:-1}
PORT=${PORT:-9791}
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$repo/target}/release/mapek
dir=$(mktemp -d)
trap 'kill $daemon 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin" keys generate --id daemon --out "$dir" >/dev/null
: > "$dir/trusted-keys.toml"
cp -r "$repo/policies" "$dir/policies"
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$TOKEN" > "$dir/intake.token"
cat > "$dir/mapek.toml" <<TOML
database_url = "mapek.db"
listen = "127.0.0.1:$PORT"
interval = "1h"
intake_token_file = "intake.token"
log_format = "json"
TOML
"$bin" --config "$dir/mapek.toml" run > "$dir/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
LINES=$LINES TOKEN=$TOKEN wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$here/post.lua" "http://127.0.0.1:$PORT/v1/events"
accepted=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^mapek_intake_events_total\{result="accepted"\}/ {print $2}')
refused=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^mapek_intake_events_total\{result="refused"\}/ {print $2}')
kill -TERM $daemon; wait $daemon || true
stored=$(python3 - "$dir/mapek.db" <<'PY'
# Sums the counts in every batch body, decoded here independently of the daemon: a body is
# postcard (docs/registry.md), a list of (series, bucket, ok, failed, downloads) then a list of
# (bucket, bound_ms, lookups), every integer a zigzag LEB128 varint, every length a varint.
import sqlite3, sys
def varint(b, i):
    n = shift = 0
    while True:
        byte = b[i]; i += 1
        n |= (byte & 0x7F) << shift; shift += 7
        if byte < 0x80:
            return n, i
def signed(b, i):
    n, i = varint(b, i)
    return (n >> 1) ^ -(n & 1), i
def tuples(b, i, width):
    count, i = varint(b, i)
    out = []
    for _ in range(count):
        row = []
        for _ in range(width):
            v, i = signed(b, i); row.append(v)
        out.append(row)
    return out, i
db = sqlite3.connect(sys.argv[1])
n = 0
for (body,) in db.execute("SELECT body FROM telemetry_batches"):
    releases, i = tuples(body, 0, 5)
    lookups, i = tuples(body, i, 3)
    assert i == len(body), "trailing bytes in a body"
    n += sum(ok + failed + downloads for (_, _, ok, failed, downloads) in releases)
    n += sum(k for (_, _, k) in lookups)
print(n)
PY
)
echo "accepted (committed, by the daemon's count): $accepted, refused: $refused, stored: $stored"
# wrk's own count (above) is of answered requests; requests cut off when wrk stops may still be
# committed (their clients would send them again), so stored may exceed wrk's count, never the
# daemon's.
if [ "$accepted" != "$stored" ]; then echo "MISMATCH: accepted and stored differ"; exit 1; fi
echo "nothing lost: every accepted event is stored"
