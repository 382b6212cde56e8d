#!/usr/bin/env bash
# Soak test of `lanes serve`: starts a server, sends a steady mix of valid
# requests (sizes, both APIs, options) and bad inputs for N minutes
# (crates/lanes-cli/tests/clients/soak.py, python3 stdlib only), then checks
# 0 unexpected statuses, 0 transport errors, well-formed answers and a flat RSS
# (VmRSS every 10 s: last-quarter median <= first-quarter median x 1.10 + 16 MB).
# Prints one JSON summary on stdout; exit 0 only if all of that holds.
#
#   scripts/soak.sh [--minutes 30] [--device cpu|cuda|cuda:N] [--rate R]
#                   [--bin target/release/lanes] [--model DIR] [--out FILE]
#                   [-- EXTRA lanes serve ARGS]
#
# --rate defaults to 2 requests/s on the CPU and 40 on CUDA (a request carries
# 22 texts on average). Works from a checkout or from a staged folder on the GPU
# machine (pass --bin and --model).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
minutes=30 device=cpu rate="" bin="$here/target/release/lanes" model="${LANES_MODEL:-$here/models/all-MiniLM-L6-v2}"
out="" py=${PYTHON:-python3}
soak_py="$here/crates/lanes-cli/tests/clients/soak.py"
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --soak-py) soak_py=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x "$bin" ]] || { echo "soak: no lanes binary at $bin (cargo build --release)" >&2; exit 2; }
[[ -f "$model/model.safetensors" ]] || { echo "soak: no model in $model" >&2; exit 2; }
[[ -n "$rate" ]] || { [[ "$device" == cpu ]] && rate=2 || rate=40; }
seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')

log=$(mktemp -t lanes-soak.XXXXXX)
fifo=$(mktemp -u -t lanes-soak-out.XXXXXX)
mkfifo "$fifo"
"$bin" serve --host 127.0.0.1 --port 0 --device "$device" --model "$model" "${extra[@]}" \
  >"$fifo" 2>"$log" &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  rm -f "$fifo"
}
trap cleanup EXIT
exec 3<"$fifo"
base=""
while IFS= read -r -t 180 line <&3; do
  if [[ "$line" == "listening on "* ]]; then base=${line#listening on }; break; fi
done
[[ -n "$base" ]] || { echo "soak: no address from lanes serve; log:" >&2; cat "$log" >&2; exit 1; }
cat <&3 >/dev/null &
for _ in $(seq 1 1800); do
  "$py" -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('$base/health', timeout=5).status == 200 else 1)" \
    2>/dev/null && break
  sleep 0.1
done
echo "soak: $base (pid $pid, $device) for $minutes min at $rate req/s" >&2

set +e
summary=$(NO_PROXY=127.0.0.1 no_proxy=127.0.0.1 "$py" "$soak_py" --base "$base" --pid "$pid" \
  --seconds "$seconds" --rate "$rate")
status=$?
set -e
# The server must still be alive and stop cleanly on SIGTERM.
alive=true; kill -0 "$pid" 2>/dev/null || alive=false
kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then exit_code=timeout; kill -KILL "$pid"; else wait "$pid" && exit_code=0 || exit_code=$?; fi
trap - EXIT
rm -f "$fifo"
final=$("$py" -c '
import json, sys
s = json.loads(sys.argv[1]) if sys.argv[1] else {"pass": False, "error": "soak.py printed nothing"}
s["device"], s["server_alive_at_end"], s["server_exit"] = sys.argv[2], sys.argv[3] == "true", sys.argv[4]
s["server_log_tail"] = open(sys.argv[5], errors="replace").read().splitlines()[-5:]
s["pass"] = bool(s.get("pass")) and s["server_alive_at_end"] and s["server_exit"] == "0"
print(json.dumps(s))
sys.exit(0 if s["pass"] else 1)
' "$summary" "$device" "$alive" "$exit_code" "$log") && rc=0 || rc=1
rm -f "$log"
[[ -n "$out" ]] && echo "$final" >"$out"
echo "$final"
[[ $status -eq 0 && $rc -eq 0 ]]
