#!/usr/bin/env bash
# Runs fuzz targets to 10 million executions each (docs/reliability.md) and prints one table
# row per target: executions, time, executions a second, peak RSS, and what it found.
#
#   ./fuzz/long.sh                  every target, one after the other
#   ./fuzz/long.sh intake policy    these ones
#   RUNS=1000000 ./fuzz/long.sh     fewer executions
#   SANITIZER=address ./fuzz/long.sh  with AddressSanitizer (the default here is none: the
#                                   crate forbids unsafe code, and ASan halves the rate)
#   ARGS=-max_len=16384 ./fuzz/long.sh import   more libFuzzer options (the table's row is
#                                   then for those options: say so where it is quoted)
#
# Logs go to fuzz/logs/<target>.log; a crash or a hang leaves its input under
# fuzz/artifacts/<target>/ and makes the script exit 1 after the remaining targets.
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-10000000}"
sanitizer="${SANITIZER:-none}"
read -r -a extra <<<"${ARGS:-}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(intake audit_export scenario config archive catalog import policy)
[ -d fuzz/corpus ] || ./fuzz/seed.sh
mkdir -p fuzz/logs
cargo +nightly fuzz build -O -s "$sanitizer" || exit 1
failed=0
echo "| target | executions | time | per second | peak RSS | crashes, hangs over 1 s, allocations over 1 GiB |"
echo "| --- | --- | --- | --- | --- | --- |"
for t in "${targets[@]}"; do
  log="fuzz/logs/$t.log"
  start=$(date +%s)
  if cargo +nightly fuzz run -O -s "$sanitizer" "$t" "fuzz/corpus/$t" -- \
      -runs="$runs" -rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=1 \
      -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
    found="none"
  else
    found="FAILED: see $log and fuzz/artifacts/$t/"
    failed=1
  fi
  secs=$(($(date +%s) - start))
  done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
  echo "| \`$t\` | ${done_runs:-?} | ${secs} s | ${rate:-?} | ${rss:-?} MiB | $found |"
done
exit $failed
