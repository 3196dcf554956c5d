#!/usr/bin/env bash
# Seeds each fuzz target's corpus from the repository (policies, scenarios, the shipped and demo
# configuration) and, when it is there, the shared ggen fixtures (indexes, catalogs, manifests,
# receipts, real pack archives). Run from anywhere; writes fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared/fixtures
c=fuzz/corpus
mkdir -p "$c"/{policy,scenario,config,import,intake,audit_export,catalog,archive}
cp policies/*.toml "$c/policy/"
cp simulations/*.toml "$c/scenario/"
cp deploy/mapek.toml "$c/config/"
printf '%s\n' \
  '{"type":"install","package":"pkg-00001","version":"1.0.0","ok":false,"error":"checksum"}' \
  '{"type":"download","package":"pkg-00001","version":"1.0.0","at":"2026-11-15T12:00:00Z"}' \
  '{"type":"lookup","latency_ms":12.5}' \
  '{"type":"report","package":"pkg-00002","version":"1.0.0","reporter":"alice","category":"malware"}' \
  > "$c/intake/lines.ndjson"
printf '%s\n' '{"seq":1,"at":1,"kind":"remediation.executed","actor":"daemon","subject":"pkg@1.0.0","remediation_id":null,"detail":"{}","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","hash":"","signature":""}' \
  > "$c/audit_export/one.jsonl"
if [ -d "$shared" ]; then
  # The import target takes a first byte that picks the reader: 0 JSON, 1 package.toml, 2 pack.toml.
  { printf '\x00'; cat "$shared/ggen/registry-index.json"; } > "$c/import/index"
  { printf '\x00'; cat "$shared/ggen-marketplace/dist/site/index.json"; } > "$c/import/catalog"
  n=0
  for f in "$shared"/ggen/packages/*/package.toml; do
    [ -f "$f" ] || continue; n=$((n + 1)); [ $n -le 20 ] || break
    { printf '\x01'; cat "$f"; } > "$c/import/package-$n"
  done
  n=0
  for f in "$shared"/ggen/packs/*/pack.toml "$shared"/ggen-marketplace/packs/*/pack.toml; do
    [ -f "$f" ] || continue; n=$((n + 1)); [ $n -le 20 ] || break
    { printf '\x02'; cat "$f"; } > "$c/import/pack-$n"
  done
  n=0
  for f in "$shared"/ggen/receipts/*/*.json; do
    [ -f "$f" ] || continue; n=$((n + 1)); [ $n -le 10 ] || break
    { printf '\x00'; cat "$f"; } > "$c/import/receipt-$n"
  done
  cp "$shared/ggen-marketplace/dist/site/index.json" "$c/catalog/"
  # A loop, not `ls | head`: under pipefail, head closing the pipe early kills ls (SIGPIPE, 141).
  n=0
  for f in "$shared"/ggen-marketplace/dist/packs/*.tar.gz; do
    [ -f "$f" ] || continue; n=$((n + 1)); [ $n -le 10 ] || break
    cp "$f" "$c/archive/"
  done
else
  echo "seed: $shared is missing; the corpora hold the repository's files only"
fi
