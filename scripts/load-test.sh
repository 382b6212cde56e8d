#!/usr/bin/env bash
# Bounded load test of `lanes serve` on loopback: requests/s and latency at 1, 16
# and 64 concurrent clients, with dynamic batching and without.
#
#   scripts/load-test.sh BIN DEVICE SECONDS [extra `lanes serve` args...]
#   scripts/load-test.sh target/release/lanes cpu 5
#   scripts/load-test.sh ./lanes cuda 10 --workers 8
#
# Needs only the `lanes` binary: the load comes from its hidden `lanes loadgen`
# subcommand (closed loop, one keep-alive connection per client, loopback only),
# so it runs as is on a machine without cargo. Each cell runs SECONDS after a
# 1 s warm-up; a server is started per mode and stopped with SIGTERM.
# Env: CONCURRENCY="1 16 64", INPUTS=1 (texts per request), PATH_=/v1/embeddings,
# LANES_MODEL (model folder), MODES="batching no-batching".
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
BIN=$1 DEVICE=$2 SECS=$3
shift 3
EXTRA=("$@")
CONCURRENCY=${CONCURRENCY:-"1 16 64"}
INPUTS=${INPUTS:-1}
ROUTE=${PATH_:-/v1/embeddings}
MODES=${MODES:-"batching no-batching"}

[[ -x $BIN ]] || { echo "load-test: $BIN is not an executable" >&2; exit 2; }
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

start_server() { # mode; sets server_pid and url
  local flags=()
  [[ $1 == no-batching ]] && flags=(--no-batching)
  : >"$work/out"
  "$BIN" serve --device "$DEVICE" --host 127.0.0.1 --port 0 --max-queue-tokens 100000000 \
    "${flags[@]}" "${EXTRA[@]}" >"$work/out" 2>"$work/err.$1" &
  server_pid=$!
  for _ in $(seq 1 600); do
    if grep -q '^listening on ' "$work/out"; then
      url=$(sed -n 's/^listening on //p' "$work/out" | head -n1)
      return 0
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "load-test: lanes serve exited:" >&2
      cat "$work/err.$1" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "load-test: lanes serve did not start in 60 s" >&2
  exit 1
}

stop_server() {
  kill -TERM "$server_pid"
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=""
  [[ $rc -eq 0 ]] || echo "load-test: lanes serve exited with $rc" >&2
}

echo "# lanes serve load test: device $DEVICE, ${SECS} s per cell, $INPUTS text(s) per request, route $ROUTE"
echo "# server extra args: ${EXTRA[*]:-(none)}; binary: $("$BIN" --version 2>/dev/null || echo "$BIN")"
echo
echo "| mode | clients | requests/s | texts/s | p50 ms | p90 ms | p99 ms | non-2xx | errors | forward passes | mean texts/pass |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for mode in $MODES; do
  start_server "$mode"
  for c in $CONCURRENCY; do
    m0=$(exec 3<>/dev/tcp/127.0.0.1/"${url##*:}"; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3)
    line=$("$BIN" loadgen --url "$url" --path "$ROUTE" --concurrency "$c" \
      --duration-secs "$SECS" --warmup-secs 1 --inputs-per-request "$INPUTS")
    m1=$(exec 3<>/dev/tcp/127.0.0.1/"${url##*:}"; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3)
    get() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$line"; }
    metric() { awk -v k="$2" '$1 == k { print $2 }' <<<"$1"; }
    passes=$(( $(metric "$m1" lanes_batches_total) - $(metric "$m0" lanes_batches_total) ))
    texts=$(( $(metric "$m1" lanes_texts_total) - $(metric "$m0" lanes_texts_total) ))
    per_pass=$(awk -v t="$texts" -v p="$passes" 'BEGIN { printf (p > 0 ? "%.1f" : "-"), t / p }')
    echo "| $mode | $c | $(get rps) | $(get texts_per_s) | $(get p50_ms) | $(get p90_ms) | $(get p99_ms) | $(get non_2xx) | $(get errors) | $passes | $per_pass |"
  done
  stop_server
done
