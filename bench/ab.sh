#!/usr/bin/env bash
# A/B comparison of two tokengate builds on the bench's rows, made to see differences of 1-2 %.
#
#   bench/run.sh --quick --keep            # once: row configurations, keys and tokens, kept in DIR
#   bench/ab.sh DIR BEFORE AFTER           # BEFORE, AFTER: two tokengate binaries
#   bench/ab.sh --help                     # every option
#
# `run.sh` measures each row a few times, minutes apart; this machine's speed drifts by several
# percent over minutes (other tenants, frequency), more than a refactoring's cost. Here both
# builds run side by side, each with the row's configuration from DIR on ports of its own, with
# one upstream and one issuer, all pinned to SERVER_CPUS; wrk (on LOAD_CPUS) loads them in turn
# in short slices, in groups of four ordered BEFORE AFTER AFTER BEFORE, so drift over a group is
# shared by both and a linear trend cancels. Each group gives one ratio, AFTER req/s over BEFORE
# req/s; the row's result is their mean with its standard error. Prints a Markdown table.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROWS="3 4 6 7"
GROUPS_N=8
SLICE=2
CONNS=64
LOAD_CPUS=${LOAD_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
export TOKENGATE_LOG=${TOKENGATE_LOG:-info}  # the production default: one access line per request

usage() {
  cat <<EOF
usage: bench/ab.sh [options] DIR BEFORE AFTER
  DIR              a work directory kept by bench/run.sh --keep (row*.toml, issuer-rsa.pem, tokens.txt)
  BEFORE, AFTER    the two tokengate binaries
  --rows "N ..."   rows to compare, from 3 4 5 6 7 (default "$ROWS"; 5 sends one token too, so it is 4)
  --groups N       groups of four runs per row (default $GROUPS_N)
  --slice S        seconds per run (default $SLICE)
  --conns N        wrk connections (default $CONNS)
environment: LOAD_CPUS (default 0) and SERVER_CPUS (default 1) for taskset; CARGO_TARGET_DIR.
EOF
}

ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS=$2; shift ;;
    --groups) GROUPS_N=$2; shift ;;
    --slice) SLICE=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
[ "${#ARGS[@]}" = 3 ] || { usage >&2; exit 2; }
DIR=${ARGS[0]}; BEFORE=${ARGS[1]}; AFTER=${ARGS[2]}

die() { echo "bench/ab.sh: $*" >&2; exit 1; }
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
[ -x "$BIN/bench-issuer" ] || die "$BIN/bench-issuer not found (build with: cargo build --release --workspace --bins)"
for b in "$BEFORE" "$AFTER"; do [ -x "$b" ] || die "$b is not an executable"; done
for f in issuer-rsa.pem tokens.txt; do [ -f "$DIR/$f" ] || die "$DIR/$f not found (make DIR with bench/run.sh --quick --keep)"; done
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
TOKEN=$(head -n 1 "$DIR/tokens.txt")

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # start LOG CMD...: a pinned server
  local log=$1; shift
  taskset -c "$SERVER_CPUS" "$@" >"$log" 2>&1 &
  PIDS+=($!)
}
wait_http() {  # wait_http URL: until it answers 200 (30 s)
  local i
  for i in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
# port_of KEY FILE: the port of the first `KEY = "http://127.0.0.1:PORT..."` in FILE.
port_of() { sed -n "s|^$1 = \"http://127.0.0.1:\([0-9]*\).*|\1|p" "$2" | head -n 1; }

# The upstream and the issuer, on the ports the kept configurations name.
first_row=${ROWS%% *}
[ -f "$DIR/row$first_row.toml" ] || die "$DIR/row$first_row.toml not found"
P_UP=$(port_of url "$DIR/row$first_row.toml")
P_ISS=$(port_of issuer "$DIR/row4.toml")
[ -n "$P_UP" ] && [ -n "$P_ISS" ] || die "no upstream url or issuer in $DIR/row$first_row.toml, $DIR/row4.toml"
start "$DIR/ab-upstream.log" "$BIN/bench-issuer" upstream "127.0.0.1:$P_UP"
start "$DIR/ab-issuer.log" "$BIN/bench-issuer" serve --listen "127.0.0.1:$P_ISS" --key "$DIR/issuer-rsa.pem"
wait_http "http://127.0.0.1:$P_UP/" || die "the upstream did not start on port $P_UP"
wait_http "http://127.0.0.1:$P_ISS/.well-known/openid-configuration" || die "the issuer did not start on port $P_ISS"

# run URL: one slice of wrk; prints req/s (0 when any answer was not 2xx).
run() {
  local header=() out
  [ "$row" = 3 ] || header=(-H "Authorization: Bearer $TOKEN")
  out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${SLICE}s" "${header[@]}" "$1")
  if grep -q -E "Non-2xx|Socket errors" <<<"$out"; then echo 0; return; fi
  awk '/^Requests\/sec/ { print $2 }' <<<"$out"
}

echo "| row | groups | $(basename "$BEFORE") req/s | $(basename "$AFTER") req/s | after / before (mean ± standard error) | min–max |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for row in $ROWS; do
  [ -f "$DIR/row$row.toml" ] || die "$DIR/row$row.toml not found"
  mapfile -t P < <("$BIN/bench-issuer" ports 4)
  # Each build gets the row's configuration with its own main and admin ports ([server] listen
  # comes first in the file, [admin] listen second); relative key paths stay valid in DIR.
  for side in a b; do
    case $side in a) main=${P[0]}; admin=${P[1]}; bin=$BEFORE ;; b) main=${P[2]}; admin=${P[3]}; bin=$AFTER ;; esac
    awk -v main="$main" -v admin="$admin" '/^listen = / { n++; sub(/:[0-9]+"/, ":" (n == 1 ? main : admin) "\"") } { print }' \
      "$DIR/row$row.toml" >"$DIR/ab-$side-row$row.toml"
    start "$DIR/ab-$side.log" "$bin" serve --config "$DIR/ab-$side-row$row.toml"
    wait_http "http://127.0.0.1:$admin/readyz" || die "$(basename "$bin") row $row not ready: $(tail -n 2 "$DIR/ab-$side.log")"
  done
  A="http://127.0.0.1:${P[0]}/api/orders/42"; B="http://127.0.0.1:${P[2]}/api/orders/42"
  run "$A" >/dev/null; run "$B" >/dev/null  # warm-up (row 7: the userinfo cache)
  ratios=(); sum_a=0; sum_b=0
  for g in $(seq "$GROUPS_N"); do
    a1=$(run "$A"); b1=$(run "$B"); b2=$(run "$B"); a2=$(run "$A")
    for v in "$a1" "$b1" "$b2" "$a2"; do [ "${v%.*}" -gt 0 ] || die "row $row: a run failed (non-2xx or socket errors)"; done
    ratios+=("$(awk -v a="$a1" -v b="$b1" -v c="$b2" -v d="$a2" 'BEGIN { printf "%.5f", (b + c) / (a + d) }')")
    sum_a=$(awk -v s="$sum_a" -v x="$a1" -v y="$a2" 'BEGIN { print s + x + y }')
    sum_b=$(awk -v s="$sum_b" -v x="$b1" -v y="$b2" 'BEGIN { print s + x + y }')
    echo "row $row group $g/$GROUPS_N: before $a1 $a2, after $b1 $b2, ratio ${ratios[-1]}" >&2
  done
  printf '%s\n' "${ratios[@]}" | awk -v row="$row" -v n="$GROUPS_N" -v sa="$sum_a" -v sb="$sum_b" '
    { x[NR] = $1; s += $1; if (NR == 1 || $1 < lo) lo = $1; if (NR == 1 || $1 > hi) hi = $1 }
    END { m = s / NR; for (i = 1; i <= NR; i++) v += (x[i] - m) ^ 2
          se = (NR > 1) ? sqrt(v / (NR - 1) / NR) : 0
          printf "| %s | %d | %.0f | %.0f | %.3f ± %.3f | %.3f–%.3f |\n", row, n, sa / (2 * n), sb / (2 * n), m, se, lo, hi }'
  # Stop this row's two instances before the next row.
  for pid in "${PIDS[@]:2}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  PIDS=("${PIDS[@]:0:2}")
done
