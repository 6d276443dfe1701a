#!/usr/bin/env bash
# Fuzz every parser of untrusted bytes with cargo-fuzz (libFuzzer, nightly toolchain):
#   scripts/fuzz.sh                 every target for its default time (network-facing 30 min,
#                                   the others 10 min), two at a time
#   scripts/fuzz.sh pdu dataset     only these targets
#   FUZZ_SECS=60 scripts/fuzz.sh    every target for 60 s (a smoke run)
# Seeds come from the project's fixtures (fuzz/seed.py); the corpora grow in fuzz/corpus/<target>
# and crashes land in fuzz/artifacts/<target>. Each run's last libFuzzer line (executions,
# coverage, features, corpus) is appended to fuzz/results.tsv; docs/fuzzing.md records them.
set -euo pipefail
cd "$(dirname "$0")/.."

NETWORK="pdu command dataset"
OTHERS="rle jpeg_baseline jpeg_lossless jpeg_ls jpeg2000 deflate config"
TARGETS=${*:-$NETWORK $OTHERS}
JOBS=${FUZZ_JOBS:-2}

command -v cargo >/dev/null || { echo "fuzz: cargo not found" >&2; exit 1; }
rustup toolchain list 2>/dev/null | grep -q nightly || {
  echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz
scripts/setup-python.sh
[[ -d fuzz/corpus ]] || .venv/bin/python fuzz/seed.py

max_len() {
  case $1 in
    pdu) echo 70000 ;;
    command) echo 65536 ;;
    config) echo 16384 ;;
    *) echo 524288 ;;
  esac
}

secs_for() {
  if [[ -n ${FUZZ_SECS:-} ]]; then echo "$FUZZ_SECS"; return; fi
  case " $NETWORK " in *" $1 "*) echo 1800 ;; *) echo 600 ;; esac
}

(cd fuzz && cargo +nightly fuzz build -O)

run_one() {
  local t=$1 secs log
  secs=$(secs_for "$t")
  log=fuzz/logs/$t.log
  mkdir -p fuzz/logs "fuzz/corpus/$t" "fuzz/artifacts/$t"
  # -malloc_limit_mb: any single allocation over 512 MiB is a finding (the harnesses cap files
  # at 8 MiB and images at 4 megapixels); -rss_limit_mb: the whole process stays under 2 GiB
  (cd fuzz && cargo +nightly fuzz run -O "$t" -- \
      -max_total_time="$secs" -max_len="$(max_len "$t")" \
      -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=30 -print_final_stats=1 \
      ) >"$log" 2>&1 && rc=0 || rc=$?
  local last execs cov ft corp
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9a-zA-Z]+).*/\1/p' <<<"$last")
  printf '%s\t%s\t%ss\t%s\t%s\t%s\t%s\trc=%s\n' "$(date -u +%FT%TZ)" "$t" "$secs" \
    "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$rc" | tee -a fuzz/results.tsv
  if ((rc != 0)); then
    echo "fuzz: $t FOUND A CRASH (see $log and fuzz/artifacts/$t)" >&2
  fi
  return "$rc"
}

status=0
pids=()
for t in $TARGETS; do
  run_one "$t" &
  pids+=($!)
  if ((${#pids[@]} >= JOBS)); then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "fuzz: date target time executions coverage features corpus -> fuzz/results.tsv"
exit $status
