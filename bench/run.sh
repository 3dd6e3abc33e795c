#!/usr/bin/env bash
# Side-by-side benchmark of tokengate against no proxy and a bare hyper forwarder (issue 8), a
# DPoP row and a warm introspection row (issue 16), plus a gRPC unary row (h2load) through
# tokengate against the same gRPC service direct.
#
#   bench/run.sh            # full run: 3 interleaved rounds, 10 s per row at c=64, 5 s at c=1
#   bench/run.sh --quick    # smoke test: 1 round, 1 s per row, c=8, few tokens (numbers meaningless)
#   bench/run.sh --help     # every option
#
# Builds in release mode, installs wrk and h2load (and taskset, curl, openssl) when missing, starts every process on
# 127.0.0.1 with free ports, runs the rows interleaved, measures memory, runs the crypto
# micro-benchmark, prints Markdown tables, and stops every process it started. See bench/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=3
DURATION=10
LAT_DURATION=
CONNS=64
TOKENS=100000
IDLE_CONNS=10000
STREAM_MIB=1024
USERINFO_DELAY_MS=20
QUICK=0
PARTIAL=0
BUILD=1
CRYPTO=1
MEMORY=1
WARMUP=1
KEEP=0
DPOP_MAX_AGE=
LOG_LEVEL=${TOKENGATE_LOG:-info}
LOAD_CPUS=${LOAD_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}

usage() {
  cat <<EOF
usage: bench/run.sh [options]
  --quick               1 round, 1 s per row, c=8, 2000 tokens, 500 idle connections, 64 MiB stream
  --rounds N            interleaved rounds (default $ROUNDS)
  --duration S          seconds per row at c=64 (default $DURATION)
  --latency-duration S  seconds per row at c=1 (default: half of --duration, at least 1)
  --conns N             connections of the throughput runs (default $CONNS)
  --tokens N            tokens pre-minted for row 5 (default $TOKENS)
  --dpop-max-age S      [dpop].max_age of row 10 in seconds (default: 300, or 3 × --duration + 60 if more)
  --idle-conns N        idle keep-alive connections for the memory test (default $IDLE_CONNS)
  --stream-mib N        MiB streamed each way for the peak-RSS test (default $STREAM_MIB)
  --log-level L         TOKENGATE_LOG of the tokengate processes (default: info, the production default)
  --partial             also measure rows whose feature is missing, marked "partial"
  --no-build            use the binaries already in target/release
  --no-crypto           skip the criterion micro-benchmark
  --no-memory           skip the memory measurements
  --keep                keep the work directory (configs, tokens, logs)
environment: LOAD_CPUS (default 0) and SERVER_CPUS (default 1) for taskset; CARGO_TARGET_DIR.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1; DURATION=1; LAT_DURATION=1; CONNS=8; TOKENS=2000
             IDLE_CONNS=500; STREAM_MIB=64; WARMUP=0 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --latency-duration) LAT_DURATION=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --tokens) TOKENS=$2; shift ;;
    --dpop-max-age) DPOP_MAX_AGE=$2; shift ;;
    --idle-conns) IDLE_CONNS=$2; shift ;;
    --stream-mib) STREAM_MIB=$2; shift ;;
    --log-level) LOG_LEVEL=$2; shift ;;
    --partial) PARTIAL=1 ;;
    --no-build) BUILD=0 ;;
    --no-crypto) CRYPTO=0 ;;
    --no-memory) MEMORY=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ -n "$LAT_DURATION" ] || LAT_DURATION=$(( DURATION / 2 > 0 ? DURATION / 2 : 1 ))
# Row 10's proofs are made just before each run, so the oldest one used is about a run (plus its
# making) old; the default leaves ample room.
[ -n "$DPOP_MAX_AGE" ] || DPOP_MAX_AGE=$(( 3 * DURATION + 60 > 300 ? 3 * DURATION + 60 : 300 ))

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }

# ------------------------------------------------------------------------------------------------
# Tools
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # row 10: a proof's ath (SHA-256 of the token)
# h2load (the gRPC rows) is optional: without it and without root, those rows are n/a.
H2LOAD_MISSING=
if ! command -v h2load >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then need+=(nghttp2-client); else H2LOAD_MISSING="h2load not installed (apt-get install nghttp2-client)"; fi
fi
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root"
  say "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
if [ "$BUILD" = 1 ]; then
  say "building (release) ..."
  (cd "$ROOT" && cargo build --release --locked --workspace --bins --quiet)
  if [ "$CRYPTO" = 1 ]; then
    out=$(cd "$ROOT" && cargo bench --locked --bench crypto --no-run 2>&1) || { say "$out"; die "cargo bench --no-run failed"; }
  fi
fi
for b in tokengate bare-forwarder bench-issuer grpc-echo; do
  [ -x "$BIN/$b" ] || die "$BIN/$b not found (build with: cargo build --release --workspace --bins)"
done

# Pinning: the load generator on LOAD_CPUS, every server on SERVER_CPUS.
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
  PIN_NOTE="load generator (wrk) pinned to CPU $LOAD_CPUS; every server (upstream, issuer, bare forwarder, tokengate) pinned to CPU $SERVER_CPUS (taskset)"
  LOAD_PIN=(taskset -c "$LOAD_CPUS")
  SERVER_PIN=(taskset -c "$SERVER_CPUS")
  SERVER_CORES=$(taskset -c "$SERVER_CPUS" nproc)
else
  PIN_NOTE="only $NCPU CPU: no pinning, load generator and servers share it (ratios are less meaningful)"
  LOAD_PIN=()
  SERVER_PIN=()
  SERVER_CORES=$NCPU
fi

export TOKENGATE_LOG=$LOG_LEVEL

# More descriptors for the idle-connection test (inherited by every process started below).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

# ------------------------------------------------------------------------------------------------
# Process bookkeeping: everything started is killed on exit, Ctrl-C or failure.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-bench.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid mine=()
  # Only our own children (a pid is checked against our pid before it is signalled).
  for pid in "${PIDS[@]}"; do
    [ "$(cut -d' ' -f4 "/proc/$pid/stat" 2>/dev/null)" = "$$" ] && mine+=("$pid")
  done
  PIDS=("${mine[@]}")
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do
      case "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" in ''|Z|X) ;; *) alive=1 ;; esac
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: starts a pinned server, logs to $WORK/NAME.log, records its pid in PID_NAME.
start() {
  local name=$1; shift
  "${SERVER_PIN[@]}" "$@" >>"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  printf -v "PID_$name" '%s' "$!"
}

# forget PID: a process we stopped and reaped ourselves.
forget() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

# wait_http URL [SECS]: until URL answers 200.
wait_http() {
  local deadline=$(( $(date +%s) + ${2:-30} ))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 200 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

rss_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v kb="${1:-0}" 'BEGIN { printf "%.1f MiB", kb / 1024 }'; }

# ------------------------------------------------------------------------------------------------
# Ports, keys, tokens
mapfile -t PORTS < <("$BIN/bench-issuer" ports 27)
P_UP=${PORTS[0]}; P_ISS=${PORTS[1]}; P_BARE=${PORTS[2]}; P_BARE_POOL=${PORTS[19]}
P_GRPC=${PORTS[20]}; P_TG_GRPC=${PORTS[21]}; P_TG_GRPC_ADMIN=${PORTS[22]}
ISSUER_URL="http://127.0.0.1:$P_ISS"
UPSTREAM_URL="http://127.0.0.1:$P_UP"

say "minting $TOKENS RS256 tokens ..."
"$BIN/bench-issuer" mint --key "$WORK/issuer-rsa.pem" --issuer "$ISSUER_URL" \
  --count "$TOKENS" --out "$WORK/tokens.txt"
ONE_TOKEN=$(head -n 1 "$WORK/tokens.txt")
echo 0 >"$WORK/token-state"

# Row 10: one token bound (cnf.jkt) to a P-256 key, and the ath its proofs carry.
"$BIN/bench-issuer" mint --key "$WORK/issuer-rsa.pem" --issuer "$ISSUER_URL" --count 1 \
  --dpop-key "$WORK/dpop-p256.pem" --out "$WORK/dpop-token.txt"
DPOP_TOKEN=$(head -n 1 "$WORK/dpop-token.txt")
DPOP_ATH=$(printf '%s' "$DPOP_TOKEN" | openssl dgst -sha256 -binary | base64 -w0 | tr '+/' '-_' | tr -d '=')
# Row 11: an opaque token; bench-issuer's /introspect vouches for it with user 0's claims.
OPAQUE_TOKEN=bench-opaque-0

IDENTITY_MISSING=
if "$BIN/tokengate" keygen --help >/dev/null 2>&1; then
  "$BIN/tokengate" keygen --alg ES256 --out "$WORK/identity.pem" >/dev/null 2>"$WORK/keygen.err" \
    || IDENTITY_MISSING="tokengate keygen failed: $(head -n 1 "$WORK/keygen.err")"
else
  IDENTITY_MISSING="tokengate keygen"
fi
if [ -n "$IDENTITY_MISSING" ] && [ "$PARTIAL" = 1 ]; then
  # --partial: measure rows 4-8 anyway with a key made by openssl, marked "partial".
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/identity.pem" 2>/dev/null \
    || die "openssl genpkey failed"
fi

# ------------------------------------------------------------------------------------------------
# Rows
declare -A DESC URL MODE STATE NOTE INSTANCE
DESC[1]="direct to the upstream (no proxy)"
DESC[2]="bare hyper forwarder"
DESC[3]="tokengate, public route"
DESC[4]="tokengate, required: RS256 token, ES256 assertion, 3 claim headers, one token reused"
DESC[5]="same, a different token per request"
DESC[6]="same as 4 + 10 claim rules (regex, JSON Pointer)"
DESC[7]="same as 4 + userinfo = true, warm cache"
DESC[8]="same as 4 + userinfo = true, 20 ms userinfo, userinfo_max_age = 0s"
DESC[9]="reference: row 2 with tokengate's upstream pool instead of hyper-util's legacy client"
DESC[10]="same as 4, DPoP-bound token (cnf.jkt), a fresh ES256 proof per request, require_sender_constrained"
DESC[11]="same as 4, opaque token verified by RFC 7662 introspection, warm cache"
ROWS=(1 2 3 4 5 6 7 8 9 10 11)
# MODE: none (no token), one (the same bearer token: TOKEN, else row 4's), many (the token file),
# dpop (row 10's token and a new proof per request).
declare -A TOKEN
for i in "${ROWS[@]}"; do STATE[$i]=ok; NOTE[$i]=; MODE[$i]=one; done
MODE[1]=none; MODE[2]=none; MODE[3]=none; MODE[5]=many; MODE[9]=none; MODE[10]=dpop
TOKEN[11]=$OPAQUE_TOKEN
REQ_PATH=/api/orders/42
URL[1]="$UPSTREAM_URL$REQ_PATH"
URL[2]="http://127.0.0.1:$P_BARE$REQ_PATH"
URL[9]="http://127.0.0.1:$P_BARE_POOL$REQ_PATH"

# tokengate_config ROW MAIN_PORT ADMIN_PORT: the configuration of one tokengate instance.
tokengate_config() {
  local row=$1 main=$2 admin=$3 maxconn=$(( IDLE_CONNS + 1000 > 10000 ? IDLE_CONNS + 1000 : 10000 ))
  cat <<EOF
# bench/run.sh row $row: ${DESC[$row]:-memory test instance}
[server]
listen = "127.0.0.1:$main"
max_connections = $maxconn
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$admin"

[upstream]
url = "$UPSTREAM_URL"

[[issuer]]
id = "bench"
issuer = "$ISSUER_URL"
audiences = ["bench"]
algorithms = ["RS256"]
EOF
  case "$row" in
    11) cat <<'EOF'

[issuer.introspection]
client_id = "tokengate-bench"
client_secret = "bench-introspection-secret"
auth_method = "client_secret_basic"
cache_ttl = "1h"
EOF
    ;;
    10) cat <<EOF

[dpop]
max_age = "${DPOP_MAX_AGE}s"
replay_cache_entries = 4000000
EOF
    ;;
  esac
  if [ "$row" -ge 4 ] 2>/dev/null; then
    cat <<EOF

[identity]
issuer = "tokengate-bench"
signing_key = "identity.pem"
claims = ["sub", "email", "name", "groups", "scope", "client_id"]
EOF
  fi
  cat <<EOF

[identity.headers]
X-Auth-Subject = "sub"
X-Auth-Email = "email"
X-Auth-Name = "name"

[[route]]
id = "api"
path_prefix = "/api"
EOF
  case "$row" in
    3|mem) echo 'auth = "public"' ;;
    *) printf 'auth = "required"\nscopes = ["orders:read"]\n' ;;
  esac
  case "$row" in
    10) echo 'require_sender_constrained = true' ;;
    7) echo 'userinfo = true' ;;
    8) printf 'userinfo = true\nuserinfo_max_age = "0s"\n' ;;
    6) cat <<'EOF'

[[route.claims]]
claim = "email_verified"
equals = true
[[route.claims]]
claim = "/realm_access/roles"
contains_any = ["admin", "ops"]
[[route.claims]]
claim = "email"
matches = '[a-z0-9.+-]+@bench\.example'
[[route.claims]]
claim = "groups"
contains = "staff"
[[route.claims]]
claim = "name"
exists = true
[[route.claims]]
claim = "client_id"
equals = "bench-client"
[[route.claims]]
claim = "/realm_access/roles"
contains_all = ["user", "ops"]
[[route.claims]]
claim = "tenant"
one_of = ["t1", "t2", "t3"]
[[route.claims]]
claim = "/org/dept"
equals = "eng"
[[route.claims]]
claim = "scope"
contains_any = ["orders:read", "orders:write"]
EOF
    ;;
  esac
}

say "starting upstream, issuer and bare forwarder ..."
start upstream "$BIN/bench-issuer" upstream "127.0.0.1:$P_UP"
start issuer "$BIN/bench-issuer" serve --listen "127.0.0.1:$P_ISS" --key "$WORK/issuer-rsa.pem" \
  --userinfo-delay-ms "$USERINFO_DELAY_MS"
start bare "$BIN/bare-forwarder" "127.0.0.1:$P_BARE" "$UPSTREAM_URL"
start barepool "$BIN/bare-forwarder" --tokengate-pool "127.0.0.1:$P_BARE_POOL" "$UPSTREAM_URL"
wait_http "$UPSTREAM_URL/" || die "the upstream did not start: $(tail -n 3 "$WORK/upstream.log")"
wait_http "$ISSUER_URL/.well-known/openid-configuration" || die "the issuer did not start: $(tail -n 3 "$WORK/issuer.log")"
wait_http "${URL[2]}" || die "the bare forwarder did not start: $(tail -n 3 "$WORK/bare.log")"
wait_http "${URL[9]}" || die "the bare forwarder (tokengate pool) did not start: $(tail -n 3 "$WORK/barepool.log")"
INSTANCE[1]=upstream; INSTANCE[2]=bare; INSTANCE[9]=barepool

# ------------------------------------------------------------------------------------------------
# gRPC rows (h2load): the same unary gRPC service direct (g1) and through tokengate (g2)
declare -A GDESC GURL GSTATE GNOTE
GDESC[g1]="gRPC unary direct to the service (no proxy)"
GDESC[g2]="gRPC unary through tokengate: HTTP/2 upstream, required route, RS256 token reused, ES256 assertion, 3 claim headers"
GROWS=(g1 g2)
GRPC_METHOD=/bench.Echo/Unary
GURL[g1]="http://127.0.0.1:$P_GRPC$GRPC_METHOD"
GURL[g2]="http://127.0.0.1:$P_TG_GRPC$GRPC_METHOD"
for g in "${GROWS[@]}"; do GSTATE[$g]=ok; GNOTE[$g]=; done
grpc_config() {  # the configuration of the gRPC row's tokengate: as row 4, to an HTTP/2 upstream
  cat <<EOF
# bench/run.sh gRPC row g2: ${GDESC[g2]}
[server]
listen = "127.0.0.1:$P_TG_GRPC"
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$P_TG_GRPC_ADMIN"

[upstream]
url = "http://127.0.0.1:$P_GRPC"
protocol = "h2"

[[issuer]]
id = "bench"
issuer = "$ISSUER_URL"
audiences = ["bench"]
algorithms = ["RS256"]

[identity]
issuer = "tokengate-bench"
signing_key = "identity.pem"
claims = ["sub", "email", "name", "groups", "scope", "client_id"]

[identity.headers]
X-Auth-Subject = "sub"
X-Auth-Email = "email"
X-Auth-Name = "name"

[[route]]
id = "grpc"
path_prefix = "/bench.Echo"
auth = "required"
scopes = ["orders:read"]
EOF
}
"$BIN/grpc-echo" request-file "$WORK/grpc-req.bin" || die "grpc-echo request-file failed"
start grpcecho "$BIN/grpc-echo" serve "127.0.0.1:$P_GRPC"
grpc_up=0
for _ in $(seq 300); do
  "$BIN/grpc-echo" probe "http://127.0.0.1:$P_GRPC" >/dev/null 2>&1 && { grpc_up=1; break; }
  sleep 0.1
done
[ "$grpc_up" = 1 ] || die "the gRPC service did not start: $(tail -n 3 "$WORK/grpcecho.log")"
if [ -n "$H2LOAD_MISSING" ]; then
  for g in "${GROWS[@]}"; do GSTATE[$g]=na; GNOTE[$g]="$H2LOAD_MISSING"; done
elif [ -n "$IDENTITY_MISSING" ] && [ "$PARTIAL" != 1 ]; then
  GSTATE[g2]=na; GNOTE[g2]="feature missing: $IDENTITY_MISSING"
else
  grpc_config >"$WORK/grpc.toml"
  if ! "$BIN/tokengate" check --config "$WORK/grpc.toml" >/dev/null 2>"$WORK/checkgrpc.err"; then
    GSTATE[g2]=na; GNOTE[g2]="feature missing: config rejected: $( { grep -v 'problem(s) found' "$WORK/checkgrpc.err" || true; } | head -n 1 | sed "s|$WORK/||")"
  else
    start tggrpc "$BIN/tokengate" serve --config "$WORK/grpc.toml"
  fi
fi

say "starting tokengate instances ..."
declare -A ADMIN_PORT
# The index in PORTS of each tokengate row's main port (its admin port is the next one).
declare -A PORT_AT=([3]=3 [4]=5 [5]=7 [6]=9 [7]=11 [8]=13 [10]=23 [11]=25)
TG_ROWS=(3 4 5 6 7 8 10 11)
for i in "${TG_ROWS[@]}"; do
  main=${PORTS[${PORT_AT[$i]}]}; admin=${PORTS[$(( PORT_AT[$i] + 1 ))]}
  cfg=$WORK/row$i.toml
  tokengate_config "$i" "$main" "$admin" >"$cfg"
  URL[$i]="http://127.0.0.1:$main$REQ_PATH"
  ADMIN_PORT[$i]=$admin
  INSTANCE[$i]=tg$i
  if [ "$i" -ge 4 ] && [ -n "$IDENTITY_MISSING" ]; then
    if [ "$PARTIAL" = 1 ]; then
      STATE[$i]=partial; NOTE[$i]="$IDENTITY_MISSING (ES256 key made by openssl)"
    else
      STATE[$i]=na; NOTE[$i]="feature missing: $IDENTITY_MISSING"; continue
    fi
  fi
  if ! "$BIN/tokengate" check --config "$cfg" >/dev/null 2>"$WORK/check$i.err"; then
    STATE[$i]="na"; NOTE[$i]="feature missing: config rejected: $( { grep -v 'problem(s) found' "$WORK/check$i.err" || true; } | head -n 1 | sed "s|$WORK/||")"
    continue
  fi
  start "tg$i" "$BIN/tokengate" serve --config "$cfg"
done
for i in "${TG_ROWS[@]}"; do
  case "${STATE[$i]}" in ok|partial) ;; *) continue ;; esac
  if ! wait_http "http://127.0.0.1:${ADMIN_PORT[$i]}/readyz" 30; then
    STATE[$i]=fail; NOTE[$i]="not ready after 30 s: $(tail -n 2 "$WORK/tg$i.log" | tr '\n' ' ')"
  fi
done

if [ "${GSTATE[g2]}" = ok ] && ! wait_http "http://127.0.0.1:$P_TG_GRPC_ADMIN/readyz" 30; then
  GSTATE[g2]=fail; GNOTE[g2]="not ready after 30 s: $(tail -n 2 "$WORK/tggrpc.log" | tr '\n' ' ')"
fi

declare -A RSS_IDLE
for i in "${ROWS[@]}"; do
  pidvar=PID_${INSTANCE[$i]}
  [ -n "${!pidvar:-}" ] && RSS_IDLE[$i]=$(rss_kb "${!pidvar}" VmRSS)
done
INSTANCE[g1]=grpcecho; INSTANCE[g2]=tggrpc
for g in "${GROWS[@]}"; do
  pidvar=PID_${INSTANCE[$g]}
  [ -n "${!pidvar:-}" ] && RSS_IDLE[$g]=$(rss_kb "${!pidvar}" VmRSS)
done
PID_OF() { local v=PID_${INSTANCE[$1]}; echo "${!v:-}"; }

# ------------------------------------------------------------------------------------------------
# Probes: every row must answer 200 and really do what it claims.
issuer_stat() {  # issuer_stat NAME: a counter of bench-issuer's /stats (userinfo_calls, introspection_calls)
  local n
  n=$(curl -s "$ISSUER_URL/stats" 2>/dev/null | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p") || true
  echo "${n:-0}"
}
userinfo_calls() { issuer_stat userinfo_calls; }
introspection_calls() { issuer_stat introspection_calls; }
# make_proofs FILE COUNT HTU: COUNT fresh DPoP proofs for GET HTU with row 10's key and token.
make_proofs() {
  "$BIN/bench-issuer" proofs --dpop-key "$WORK/dpop-p256.pem" --ath "$DPOP_ATH" --htu "$3" \
    --count "$2" --out "$1" 2>>"$WORK/proofs.log"
}
probe() {  # probe ROW [DPOP PROOF] -> prints the echoed request the upstream saw, returns non-zero on non-200
  local row=$1 out=$WORK/probe$1.txt auth=()
  case "${MODE[$row]}" in
    none) ;;
    dpop) auth=(-H "Authorization: DPoP $DPOP_TOKEN"); [ -z "${2:-}" ] || auth+=(-H "DPoP: $2") ;;
    *) auth=(-H "Authorization: Bearer ${TOKEN[$row]:-$ONE_TOKEN}") ;;
  esac
  local code
  code=$(curl -s -o "$out" -w '%{http_code}' "${auth[@]}" "${URL[$row]%/*}/echo")
  [ "$code" = 200 ] || { echo "HTTP $code: $(head -c 200 "$out")"; return 1; }
}
assertion_auth() {  # assertion_auth FILE -> the `auth` member of the assertion the upstream saw
  local payload
  payload=$(sed -n 's/^x-identity-assertion: [^.]*\.\([^.]*\)\..*/\1/Ip' "$1" | head -n 1 | tr -d '\r' | tr '_-' '/+')
  while [ $(( ${#payload} % 4 )) != 0 ]; do payload+='='; done
  base64 -d <<<"$payload" 2>/dev/null | sed -n 's/.*"auth":"\([^"]*\)".*/\1/p'
}
missing_feature() {  # marks ROW as n/a (or partial with --partial) because FEATURE does not work
  if [ "$PARTIAL" = 1 ]; then
    STATE[$1]=partial; NOTE[$1]="${NOTE[$1]:+${NOTE[$1]}; }$2"
  else
    STATE[$1]=na; NOTE[$1]="feature missing: $2"
  fi
}
declare -A AUTH_KIND=([4]=jwt [5]=jwt [6]=jwt [7]=jwt [8]=jwt [10]=dpop [11]=introspection)
for i in "${ROWS[@]}"; do
  case "${STATE[$i]}" in ok|partial) ;; *) continue ;; esac
  proof=
  if [ "$i" = 10 ]; then
    if ! make_proofs "$WORK/probe-proofs.txt" 2 "${URL[10]%/*}/echo"; then
      STATE[10]=fail; NOTE[10]="bench-issuer proofs failed: $(tail -n 1 "$WORK/proofs.log")"; continue
    fi
    proof=$(head -n 1 "$WORK/probe-proofs.txt")
  fi
  if ! msg=$(probe "$i" "$proof"); then STATE[$i]=fail; NOTE[$i]="probe failed: $msg"; continue; fi
  seen=$(tr 'A-Z' 'a-z' <"$WORK/probe$i.txt")
  if [ -n "${AUTH_KIND[$i]:-}" ]; then
    grep -q '^x-identity-assertion: ' <<<"$seen" || missing_feature "$i" "identity assertion"
    grep -q '^x-auth-subject: user-0$' <<<"$seen" || missing_feature "$i" "claim headers"
    kind=$(assertion_auth "$WORK/probe$i.txt")
    [ "$kind" = "${AUTH_KIND[$i]}" ] || missing_feature "$i" "assertion auth = \"${AUTH_KIND[$i]}\" (it says \"$kind\")"
  fi
  if [ "$i" = 10 ]; then
    # The same proof again is a replay: 401. Then a fresh one passes again.
    if msg=$(probe 10 "$proof"); then
      missing_feature 10 "DPoP replay check (a replayed proof answered 200)"
    elif [[ "$msg" != "HTTP 401"* ]]; then
      missing_feature 10 "DPoP replay check (a replayed proof answered ${msg%%:*}, not 401)"
    elif ! msg=$(probe 10 "$(sed -n 2p "$WORK/probe-proofs.txt")"); then
      STATE[10]=fail; NOTE[10]="probe failed after the replay: $msg"
    fi
  fi
  if [ "$i" = 11 ]; then
    # The first probe filled the cache: the next request must not call /introspect.
    before=$(introspection_calls)
    probe 11 >/dev/null || true
    calls=$(( $(introspection_calls) - before ))
    [ "$calls" = 0 ] || missing_feature 11 "introspection cache (a repeated token called /introspect again, $calls calls)"
  fi
  if [ "$i" -ge 7 ] && [ "$i" -le 8 ]; then
    before=$(userinfo_calls)
    probe "$i" >/dev/null || true
    calls=$(( $(userinfo_calls) - before ))
    if ! grep -q '^x-auth-name: bench%20user%200%20(userinfo)$' <<<"$(tr 'A-Z' 'a-z' <"$WORK/probe$i.txt")"; then
      missing_feature "$i" "userinfo enrichment"
    elif [ "$i" = 7 ] && [ "$calls" != 0 ]; then
      missing_feature "$i" "userinfo cache (a repeated token called /userinfo again)"
    elif [ "$i" = 8 ] && [ "$calls" = 0 ]; then
      missing_feature "$i" "userinfo_max_age = 0s (a repeated token was served from the cache)"
    fi
  fi
done

# gRPC probes: h2load checks only the HTTP status, and a gRPC error is an HTTP 200, so one real
# gRPC call per row must answer grpc-status 0 (and the proxied one must carry the identity).
grpc_probe() {  # grpc_probe ROW -> the probe's output line; non-zero unless grpc-status 0
  local token=()
  [ "$1" = g2 ] && token=("$ONE_TOKEN")
  "$BIN/grpc-echo" probe "${GURL[$1]%"$GRPC_METHOD"}" "${token[@]}"
}
for g in "${GROWS[@]}"; do
  [ "${GSTATE[$g]}" = ok ] || continue
  if ! out=$(grpc_probe "$g" 2>&1); then GSTATE[$g]=fail; GNOTE[$g]="probe failed: $out"; continue; fi
  if [ "$g" = g2 ] && [ "$out" != "grpc-status 0 sub=user-0 assertion=yes" ]; then
    GSTATE[$g]=fail; GNOTE[$g]="probe: the service did not see the identity ($out)"
  fi
done

# ------------------------------------------------------------------------------------------------
# Load runs
RESULTS=$WORK/results.tsv
: >"$RESULTS"
# proofs_needed SECS LABEL: how many proofs row 10's next run may use: its last rate at this label
# (if that run did not run out of proofs), else row 4's (less work per request: faster), else
# 100 000 req/s; × SECS × 1.5, plus 2 000.
proofs_needed() {
  awk -F'\t' -v s="$1" -v l="$2" '$3 == l && $2 == 10 && $14 == 0 { d = $4 } $3 == l && $2 == 4 { b = $4 }
    END { r = (d > 0) ? d : (b > 0) ? b : 100000; printf "%d\n", r * s * 1.5 + 2000 }' "$RESULTS"
}
run_wrk() {  # run_wrk ROW CONNS SECS ROUND LABEL
  local row=$1 c=$2 secs=$3 round=$4 label=$5 out made=0
  local env=(BENCH_TOKEN= BENCH_TOKENS= BENCH_TOKEN_STATE= BENCH_DPOP_TOKEN= BENCH_PROOFS= BENCH_THREADS=1)
  case "${MODE[$row]}" in
    one) env+=(BENCH_TOKEN="${TOKEN[$row]:-$ONE_TOKEN}") ;;
    many) env+=(BENCH_TOKENS="$WORK/tokens.txt" BENCH_TOKEN_STATE="$WORK/token-state") ;;
    dpop)
      # A fresh file for every run (iat = now, new jti's), made before the run starts, so
      # making them costs the measured server nothing; wrk.lua sends each proof once.
      made=$(proofs_needed "$secs" "$label")
      make_proofs "$WORK/proofs.txt" "$made" "${URL[$row]}" || { say "row $row: bench-issuer proofs failed: $(tail -n 1 "$WORK/proofs.log")"; made=0; }
      env+=(BENCH_DPOP_TOKEN="$DPOP_TOKEN" BENCH_PROOFS="$WORK/proofs.txt") ;;
  esac
  local calls_before intro_before
  calls_before=$(userinfo_calls); intro_before=$(introspection_calls)
  # In the background + `wait`, so that Ctrl-C stops the run at once (wrk itself handles SIGINT).
  "${LOAD_PIN[@]}" env "${env[@]}" wrk -t1 -c"$c" -d"${secs}s" --timeout 5s --latency \
    -s "$ROOT/bench/wrk.lua" "${URL[$row]}" >"$WORK/wrk.out" 2>&1 &
  local wpid=$!
  PIDS+=("$wpid")
  wait "$wpid" || true
  forget "$wpid"
  out=$(cat "$WORK/wrk.out")
  local line
  line=$(grep '^BENCH ' <<<"$out" | tail -n 1) || true
  if [ -z "$line" ]; then
    say "row $row: wrk failed: $(tail -n 3 <<<"$out")"
    line="BENCH rps=0 p50=0 p99=0 requests=0 non2xx=0 errors=1 sent=0 unproved=0"
  fi
  rm -f "$WORK/proofs.txt"
  # round row label rps p50 p99 requests non2xx errors userinfo-calls introspection-calls
  # sent (tokens or proofs the script used) made (proofs made for the run) unproved
  awk -v r="$round" -v row="$row" -v l="$label" -v ui="$(( $(userinfo_calls) - calls_before ))" \
      -v ic="$(( $(introspection_calls) - intro_before ))" -v made="$made" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\n", r, row, l, v["rps"], v["p50"], v["p99"], v["requests"], v["non2xx"], v["errors"], ui, ic, v["sent"], made, v["unproved"]
    }' <<<"$line" >>"$RESULTS"
  # Keep the servers' logs from growing without bound (access lines); they are O_APPEND.
  for f in "$WORK"/tg*.log; do [ -e "$f" ] && : >"$f"; done
}

run_h2load() {  # run_h2load ROW CONNS SECS ROUND LABEL: one stream per connection, like wrk's rows
  local row=$1 c=$2 secs=$3 round=$4 label=$5 auth=() out
  [ "$row" = g2 ] && auth=(-H "authorization: Bearer $ONE_TOKEN")
  : >"$WORK/h2load.log"
  "${LOAD_PIN[@]}" h2load -t1 -c"$c" -m1 -D"$secs" -d "$WORK/grpc-req.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "${auth[@]}" \
    --log-file="$WORK/h2load.log" "${GURL[$row]}" >"$WORK/h2load.out" 2>&1 &
  local hpid=$!
  PIDS+=("$hpid")
  wait "$hpid" || true
  forget "$hpid"
  out=$(cat "$WORK/h2load.out")
  local rps requests non2xx errors p50 p99
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  requests=$(sed -n 's/^requests: \([0-9]*\) total.*/\1/p' <<<"$out")
  errors=$(sed -n 's/^requests: .* \([0-9]*\) failed, \([0-9]*\) errored, \([0-9]*\) timeout.*/\1 \2 \3/p' <<<"$out" | awk '{ print $1 + $2 + $3 }')
  non2xx=$(sed -n 's/^status codes: [0-9]* 2xx, \([0-9]*\) 3xx, \([0-9]*\) 4xx, \([0-9]*\) 5xx.*/\1 \2 \3/p' <<<"$out" | awk '{ print $1 + $2 + $3 }')
  if [ -z "$rps" ] || [ -z "$requests" ]; then
    say "row $row: h2load failed: $(tail -n 3 <<<"$out")"
    rps=0; requests=0; non2xx=0; errors=1
  fi
  # p50/p99 from the per-request log (third column: µs until the end of the response).
  read -r p50 p99 < <(cut -f3 "$WORK/h2load.log" | sort -n | awk '{ a[NR] = $1 }
    END { if (NR == 0) print "0 0"; else { i50 = int(NR * 0.50); i99 = int(NR * 0.99); if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1; print a[i50], a[i99] } }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$row" "$label" "$rps" "$p50" "$p99" \
    "$requests" "${non2xx:-0}" "${errors:-0}" 0 0 0 0 0 >>"$RESULTS"
  for f in "$WORK"/tg*.log; do [ -e "$f" ] && : >"$f"; done
}

ACTIVE=()
for i in "${ROWS[@]}"; do
  case "${STATE[$i]}" in ok|partial) ACTIVE+=("$i") ;; esac
done
GACTIVE=()
for g in "${GROWS[@]}"; do
  [ "${GSTATE[$g]}" = ok ] && GACTIVE+=("$g")
done
"${SERVER_PIN[@]}" true && "${LOAD_PIN[@]}" true || die "bad LOAD_CPUS/SERVER_CPUS"

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
say ""
say "$PIN_NOTE"
if [ "$WARMUP" = 1 ]; then
  say "warm-up: 1 s per row ..."
  for i in "${ACTIVE[@]}"; do run_wrk "$i" "$CONNS" 1 0 warmup; done
  for g in "${GACTIVE[@]}"; do run_h2load "$g" "$CONNS" 1 0 warmup; done
fi
for r in $(seq "$ROUNDS"); do
  say "round $r/$ROUNDS: rows ${ACTIVE[*]} ${GACTIVE[*]}, ${DURATION}s at c=$CONNS then ${LAT_DURATION}s at c=1 each ..."
  for i in "${ACTIVE[@]}"; do
    run_wrk "$i" "$CONNS" "$DURATION" "$r" thr
    run_wrk "$i" 1 "$LAT_DURATION" "$r" lat
  done
  for g in "${GACTIVE[@]}"; do
    run_h2load "$g" "$CONNS" "$DURATION" "$r" thr
    run_h2load "$g" 1 "$LAT_DURATION" "$r" lat
  done
done

# ------------------------------------------------------------------------------------------------
# Statistics helpers
col() {  # col ROW LABEL FIELD -> values over rounds (FIELD: 4 rps, 5 p50, 6 p99, 7 requests, 8 non2xx, 9 errors,
        # 10 userinfo calls, 11 introspection calls, 12 tokens/proofs used, 13 proofs made, 14 requests without a proof)
  awk -F'\t' -v row="$1" -v l="$2" -v f="$3" '$1 != 0 && $2 == row && $3 == l { print $f }' "$RESULTS"
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
minmax() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%.2f–%.2f", lo, hi }'; }
sum() { awk '{ s += $1 } END { print s + 0 }'; }
ratios() {  # ratios ROW BASE LABEL: per-round rps(ROW)/rps(BASE)
  awk -F'\t' -v a="$1" -v b="$2" -v l="$3" '$1 != 0 && $3 == l && $2 == a { x[$1] = $4 } $1 != 0 && $3 == l && $2 == b { y[$1] = $4 }
    END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' "$RESULTS"
}
us() { awk -v v="$1" 'BEGIN { if (v == "") print "–"; else if (v >= 10000) printf "%.1f ms", v / 1000; else printf "%d µs", v }'; }
is_active() { [[ " ${ACTIVE[*]} " == *" $1 "* ]]; }
is_gactive() { [[ " ${GACTIVE[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------------------------------------------
# Crypto micro-benchmark (criterion), pinned to the servers' CPU while everything is idle.
VERIFY_US=; SIGN_US=; DPOP_VERIFY_US=; DPOP_CHECK_US=
if [ "$CRYPTO" = 1 ]; then
  say "criterion: RS256 verification, ES256 signature, DPoP proof checks ..."
  # The executable `cargo bench --no-run` built (run directly: nothing is recompiled while pinned).
  crypto_exe=$(find "$TARGET_DIR/release/deps" -maxdepth 1 -type f -executable -name 'crypto-*' -printf '%T@ %p\n' 2>/dev/null \
               | sort -rn | head -n 1 | cut -d' ' -f2-)
  crypto_out="no crypto bench executable in $TARGET_DIR/release/deps (build it: cargo bench --bench crypto --no-run)"
  if [ -n "$crypto_exe" ] && crypto_out=$(cd "$ROOT" && "${SERVER_PIN[@]}" "$crypto_exe" --bench --quick 2>&1); then
    to_us='{ for (i = 1; i <= NF; i++) if ($i == "time:") { v = $(i + 3); u = $(i + 4);
             f = (u == "ns") ? 0.001 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : 1; printf "%.2f", v * f; exit } }'
    VERIFY_US=$(grep -A2 '^rs256_verify_2048' <<<"$crypto_out" | tr -d '[]' | awk "$to_us") || true
    SIGN_US=$(grep -A2 '^es256_sign' <<<"$crypto_out" | tr -d '[]' | awk "$to_us") || true
    DPOP_VERIFY_US=$(grep -A2 '^dpop/es256_verify_only' <<<"$crypto_out" | tr -d '[]' | awk "$to_us") || true
    DPOP_CHECK_US=$(grep -E -A2 '^dpop/es256_check( |$)' <<<"$crypto_out" | tr -d '[]' | awk "$to_us") || true
  else
    say "crypto micro-benchmark failed: $(tail -n 5 <<<"$crypto_out")"
  fi
fi

# ------------------------------------------------------------------------------------------------
# Report
FAILED=0
echo
echo "## tokengate benchmark"
echo
echo "- machine: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $NCPU CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
echo "- commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "- pinning: $PIN_NOTE; each server therefore runs one tokio worker thread"
echo "- $ROUNDS round(s), rows interleaved (rows 1..11 back to back in every round); ${DURATION}s per row at c=$CONNS (req/s), ${LAT_DURATION}s at c=1 (p50/p99); wrk 1 thread, HTTP/1.1 keep-alive, GET $REQ_PATH, 12-byte upstream body"
echo "- load average before the run: $LOADAVG (1/5/15 min, includes the build; other work on the machine skews the numbers)"
echo "- tokengate log level: $LOG_LEVEL (stderr to a file); row 5: $TOKENS pre-minted tokens; row 10: a fresh file of ES256 DPoP proofs before each run, each sent once ([dpop].max_age = ${DPOP_MAX_AGE}s); row 11: one opaque token, introspection cache_ttl = 1h"
[ "$QUICK" = 1 ] && echo "- **--quick smoke test: numbers are meaningless**"
echo
echo "| row | what | req/s c=$CONNS | ratio to row 2 (min–max) | p50 c=1 | p99 c=1 | p50 c=1 − row 2 | p99 c=$CONNS |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
P50_2=$(col 2 lat 5 | median)
for i in "${ROWS[@]}"; do
  name="${DESC[$i]}"
  if ! is_active "$i"; then
    echo "| $i | $name | n/a (${NOTE[$i]}) | | | | | |"
    [ "${STATE[$i]}" = fail ] && FAILED=1
    case $i in 1|2|3|9) FAILED=1 ;; esac  # these use nothing in progress: n/a there means the harness broke
    continue
  fi
  [ "${STATE[$i]}" = partial ] && name="$name (**partial, missing: ${NOTE[$i]}**)"
  rps=$(col "$i" thr 4 | median)
  if is_active 2; then
    rmed=$(ratios "$i" 2 thr | median); rmm=$(ratios "$i" 2 thr | minmax)
    ratio=$(awk -v m="$rmed" -v mm="$rmm" 'BEGIN { if (m == "") print "–"; else printf "%.2f× (%s)", m, mm }')
  else ratio="–"; fi
  p50=$(col "$i" lat 5 | median); p99=$(col "$i" lat 6 | median)
  delta=$(awk -v a="$p50" -v b="$P50_2" 'BEGIN { if (a == "" || b == "") print "–"; else printf "%+d µs", a - b }')
  p99t=$(col "$i" thr 6 | median)
  bad=$(( $(col "$i" thr 8 | sum) + $(col "$i" lat 8 | sum) ))
  errs=$(( $(col "$i" thr 9 | sum) + $(col "$i" lat 9 | sum) ))
  if [ "$bad" != 0 ] || [ "$errs" != 0 ]; then
    name="$name **(!! $bad non-2xx, $errs socket errors)**"; FAILED=1
  fi
  printf '| %s | %s | %.0f | %s | %s | %s | %s | %s |\n' "$i" "$name" "${rps:-0}" "$ratio" \
    "$(us "$p50")" "$(us "$p99")" "$delta" "$(us "$p99t")"
done

echo
echo "### gRPC unary (h2load)"
echo
echo "h2load 1 thread, HTTP/2 prior knowledge, one stream per connection (-m1, the same concurrency as the"
echo "rows above), POST $GRPC_METHOD with a 11-byte gRPC frame, \`te: trailers\`; the rows are probed with a"
echo "real gRPC client (grpc-status 0, and g2's service sees \`X-Auth-Subject\` and the assertion), since h2load"
echo "only checks HTTP statuses. Latencies from h2load's per-request log."
echo
echo "| row | what | req/s c=$CONNS | ratio to g1 (min–max) | p99 c=$CONNS | p50 c=1 | p99 c=1 |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for g in "${GROWS[@]}"; do
  name="${GDESC[$g]}"
  if ! is_gactive "$g"; then
    echo "| $g | $name | n/a (${GNOTE[$g]}) | | | | |"
    [ "${GSTATE[$g]}" = fail ] && FAILED=1
    continue
  fi
  rps=$(col "$g" thr 4 | median)
  if is_gactive g1; then
    rmed=$(ratios "$g" g1 thr | median); rmm=$(ratios "$g" g1 thr | minmax)
    ratio=$(awk -v m="$rmed" -v mm="$rmm" 'BEGIN { if (m == "") print "–"; else printf "%.2f× (%s)", m, mm }')
  else ratio="–"; fi
  p99t=$(col "$g" thr 6 | median); p50=$(col "$g" lat 5 | median); p99=$(col "$g" lat 6 | median)
  bad=$(( $(col "$g" thr 8 | sum) + $(col "$g" lat 8 | sum) ))
  errs=$(( $(col "$g" thr 9 | sum) + $(col "$g" lat 9 | sum) ))
  if [ "$bad" != 0 ] || [ "$errs" != 0 ]; then
    name="$name **(!! $bad non-2xx, $errs failed requests)**"; FAILED=1
  fi
  printf '| %s | %s | %.0f | %s | %s | %s | %s |\n' "$g" "$name" "${rps:-0}" "$ratio" \
    "$(us "$p99t")" "$(us "$p50")" "$(us "$p99")"
done

echo
echo "### Targets (issues 8 and 16)"
echo
target() {  # target NAME VALUE OP LIMIT UNIT
  local verdict
  if [ -z "$2" ]; then verdict="n/a"
  else verdict=$(awk -v v="$2" -v l="$4" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= l : v <= l; print ok ? "PASS" : "FAIL" }'); fi
  echo "- $1: ${2:-n/a}$5 (target $3 $4$5) — $verdict"
}
if is_active 3 && is_active 2; then v=$(ratios 3 2 thr | median); else v=; fi
target "row 3 / row 2 req/s" "$([ -n "$v" ] && printf '%.2f' "$v")" ">=" 0.95 ""
if is_active 4 && is_active 2; then v=$(ratios 4 2 thr | median); else v=; fi
target "row 4 / row 2 req/s" "$([ -n "$v" ] && printf '%.2f' "$v")" ">=" 0.85 ""
if is_active 7 && is_active 4; then v=$(ratios 7 4 thr | median); else v=; fi
target "row 7 / row 4 req/s" "$([ -n "$v" ] && printf '%.2f' "$v")" ">=" 0.95 ""
if is_active 4 && is_active 2; then v=$(awk -v a="$(col 4 lat 5 | median)" -v b="$P50_2" 'BEGIN { print a - b }'); else v=; fi
target "row 4 p50 − row 2 p50 at c=1" "$v" "<=" 100 " µs"
# gRPC: tokengate's share of a gRPC call may not be worse than its share of an HTTP/1.1 call.
if is_active 4 && is_active 1; then r41=$(ratios 4 1 thr | median); else r41=; fi
if is_gactive g2 && is_gactive g1; then v=$(ratios g2 g1 thr | median); else v=; fi
[ -n "$v" ] && v=$(printf '%.2f' "$v"); [ -n "$r41" ] && r41=$(printf '%.2f' "$r41")
verdict=n/a
[ -n "$v" ] && [ -n "$r41" ] && verdict=$(awk -v v="$v" -v l="$r41" 'BEGIN { print (v >= l) ? "PASS" : "FAIL" }')
echo "- gRPC g2 / g1 req/s (proxied ÷ direct gRPC): ${v:-n/a} (target >= row 4 / row 1 of this run = ${r41:-n/a}) — $verdict"

ADDED=
if is_active 5 && is_active 2; then
  rps5=$(col 5 thr 4 | median); rps2=$(col 2 thr 4 | median)
  ADDED=$(awk -v a="$rps5" -v b="$rps2" -v c="$SERVER_CORES" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", (1 / a - 1 / b) * c * 1e6 }')
fi
if is_active 5; then
  sent=$(( $(col 5 thr 7 | sum) + $(col 5 lat 7 | sum) ))
  reuse=$(awk -v s="$sent" -v t="$TOKENS" 'BEGIN { printf "%.2f", s / t }')
fi
if [ -n "$ADDED" ] && [ -n "$VERIFY_US" ] && [ -n "$SIGN_US" ]; then
  crypto=$(awk -v a="$VERIFY_US" -v b="$SIGN_US" 'BEGIN { printf "%.1f", a + b }')
  v=$(awk -v a="$ADDED" -v c="$crypto" 'BEGIN { printf "%.2f", a / c }')
  target "row 5 added CPU per request over row 2 / raw crypto cost" "$v" "<=" 1.5 "×"
  echo "  - added CPU per request of row 5 over row 2: (1/$rps5 − 1/$rps2 req/s) × $SERVER_CORES server core = $ADDED µs"
  echo "  - raw crypto (criterion, same core): RS256-2048 verify $VERIFY_US µs + ES256 sign $SIGN_US µs = $crypto µs"
else
  target "row 5 added CPU per request over row 2 / raw crypto cost" "" "<=" 1.5 "×"
  [ -n "$ADDED" ] && echo "  - added CPU per request of row 5 over row 2: $ADDED µs (no crypto measurement)"
  [ -n "$VERIFY_US" ] && echo "  - raw crypto (criterion): RS256-2048 verify $VERIFY_US µs, ES256 sign $SIGN_US µs"
fi
if is_active 5; then
  echo "  - row 5 sent $sent requests over $TOKENS distinct tokens (${reuse}× the token file; above 1 a token comes around again)"
fi
if is_active 9; then
  # Rows 3 and 4 against the same hop with the same upstream pool: tokengate's own cost.
  r3=$(is_active 3 && ratios 3 9 thr | median); r4=$(is_active 4 && ratios 4 9 thr | median)
  echo "- reference row 9 (the bare forwarder with tokengate's upstream pool): row 3 / row 9 = $(printf '%.2f' "${r3:-0}"), row 4 / row 9 = $(printf '%.2f' "${r4:-0}") req/s"
fi
for i in 7 8; do
  is_active "$i" || continue
  n=$(( $(col "$i" thr 7 | sum) + $(col "$i" lat 7 | sum) ))
  ui=$(( $(col "$i" thr 10 | sum) + $(col "$i" lat 10 | sum) ))
  ui1=$(col "$i" lat 10 | sum); n1=$(col "$i" lat 7 | sum)
  echo "- row $i: $n requests made $ui calls to /userinfo ($ui1 for the $n1 requests at c=1; at c=$CONNS, concurrent requests with the same token may share one call)"
done

# Issue 16: DPoP (row 10) and warm introspection (row 11), both against row 4 of the same run.
DADDED=
if is_active 10 && is_active 4; then
  rps10=$(col 10 thr 4 | median); rps4=$(col 4 thr 4 | median)
  DADDED=$(awk -v a="$rps10" -v b="$rps4" -v c="$SERVER_CORES" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", (1 / a - 1 / b) * c * 1e6 }')
fi
if [ -n "$DADDED" ] && [ -n "$DPOP_VERIFY_US" ]; then
  v=$(awk -v a="$DADDED" -v c="$DPOP_VERIFY_US" 'BEGIN { printf "%.2f", a / c }')
  target "row 10 (DPoP) added CPU per request over row 4 / one ES256 proof verification" "$v" "<=" 1.3 "×"
  echo "  - added CPU per request of row 10 over row 4: (1/$rps10 − 1/$rps4 req/s) × $SERVER_CORES server core = $DADDED µs"
  echo "  - ES256 proof signature verification (criterion dpop/es256_verify_only, same core): $DPOP_VERIFY_US µs; the whole proof check with its replay record (dpop/es256_check): ${DPOP_CHECK_US:-n/a} µs"
else
  target "row 10 (DPoP) added CPU per request over row 4 / one ES256 proof verification" "" "<=" 1.3 "×"
  [ -n "$DADDED" ] && echo "  - added CPU per request of row 10 over row 4: $DADDED µs (no crypto measurement)"
fi
if is_active 10; then
  n=$(( $(col 10 thr 7 | sum) + $(col 10 lat 7 | sum) ))
  used=$(( $(col 10 thr 12 | sum) + $(col 10 lat 12 | sum) ))
  made=$(( $(col 10 thr 13 | sum) + $(col 10 lat 13 | sum) ))
  short=$(( $(col 10 thr 14 | sum) + $(col 10 lat 14 | sum) ))
  echo "  - row 10 answered $n requests: wrk.lua sent $used proofs, each once, of $made made fresh before the runs; requests that found no proof left: $short (must be 0)"
  [ "$short" = 0 ] || FAILED=1
fi
if is_active 11 && is_active 4; then v=$(ratios 11 4 thr | median); else v=; fi
target "row 11 (introspection, warm cache) / row 4 req/s" "$([ -n "$v" ] && printf '%.2f' "$v")" ">=" 0.95 ""
if is_active 11; then
  n=$(( $(col 11 thr 7 | sum) + $(col 11 lat 7 | sum) ))
  ic=$(( $(col 11 thr 11 | sum) + $(col 11 lat 11 | sum) ))
  echo "  - row 11: $n requests made $ic calls to /introspect (the probes warmed the cache)"
fi

# ------------------------------------------------------------------------------------------------
# Memory
if [ "$MEMORY" = 1 ]; then
  echo
  echo "### Memory (VmRSS / VmHWM from /proc/PID/status)"
  echo
  echo "| process | RSS idle (after start) | RSS after the rounds | peak RSS (VmHWM) |"
  echo "| --- | ---: | ---: | ---: |"
  for i in "${ROWS[@]}"; do
    pid=$(PID_OF "$i")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
    echo "| row $i: ${INSTANCE[$i]} | $(mib "${RSS_IDLE[$i]:-0}") | $(mib "$(rss_kb "$pid" VmRSS)") | $(mib "$(rss_kb "$pid" VmHWM)") |"
  done
  for g in "${GROWS[@]}"; do
    pid=$(PID_OF "$g")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
    echo "| gRPC $g: ${INSTANCE[$g]} | $(mib "${RSS_IDLE[$g]:-0}") | $(mib "$(rss_kb "$pid" VmRSS)") | $(mib "$(rss_kb "$pid" VmHWM)") |"
  done
  if is_active 5; then
    echo
    echo "Row 5's tokengate (tg5) verified $(awk -v s="$sent" -v t="$TOKENS" 'BEGIN { print (s < t) ? s : t }') distinct tokens: its RSS after the rounds is the cost of the verified-token cache (if any) at that size."
  fi
  if is_active 10; then
    echo
    echo "Row 10's tokengate (tg10) keeps a replay record per proof: its store reserves room for min(replay_cache_entries, 2^20) records at the first proof (replay_cache_entries = 4 000 000 here, so that no proof of the rounds is refused for want of room), and its RSS after the rounds includes that."
  fi

  # A fresh public-route tokengate for the streaming and idle-connection tests.
  mem_main=${PORTS[15]}; mem_admin=${PORTS[16]}
  tokengate_config mem "$mem_main" "$mem_admin" >"$WORK/mem.toml"
  start tgmem "$BIN/tokengate" serve --config "$WORK/mem.toml"
  wait_http "http://127.0.0.1:$mem_admin/readyz" 30 || die "the memory-test tokengate did not start: $(tail -n 3 "$WORK/tgmem.log")"
  echo
  echo "| test (fresh process unless noted) | tokengate, public route | bare forwarder (already used by the rounds) |"
  echo "| --- | ---: | ---: |"
  stream() {  # stream PORT PID -> "peak" VmHWM after streaming STREAM_MIB each way
    local res
    res=$(head -c "$((STREAM_MIB * 1048576))" /dev/zero | "${LOAD_PIN[@]}" curl -sS -T - -o /dev/null \
          -w '%{http_code} %{size_download}' "http://127.0.0.1:$1/api/stream" 2>&1) || true
    if [ "$res" = "200 $((STREAM_MIB * 1048576))" ]; then mib "$(rss_kb "$2" VmHWM)"; else echo "failed ($res)"; fi
  }
  idle_conns() {  # idle_conns PORT PID: sets CONNS_RESULT to the RSS with IDLE_CONNS idle connections
    local out=$WORK/conns-$1.txt cpid fds deadline=$(( $(date +%s) + 120 ))
    : >"$out"
    "${LOAD_PIN[@]}" "$BIN/bench-issuer" conns "127.0.0.1:$1" "$IDLE_CONNS" "$REQ_PATH" --hold-secs 300 >"$out" 2>&1 &
    cpid=$!; PIDS+=("$cpid")
    until grep -q '^open' "$out"; do
      if ! kill -0 "$cpid" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
        CONNS_RESULT="failed ($(head -c 200 "$out"))"; kill "$cpid" 2>/dev/null || true
        wait "$cpid" 2>/dev/null || true; forget "$cpid"; return
      fi
      sleep 0.2
    done
    fds=$(ls "/proc/$2/fd" 2>/dev/null | wc -l) || true
    CONNS_RESULT="$(mib "$(rss_kb "$2" VmRSS)") ($(sed -n 's/^open \([0-9]*\).*/\1/p' "$out") open, server fds $fds)"
    kill "$cpid" 2>/dev/null || true; wait "$cpid" 2>/dev/null || true
    forget "$cpid"
  }
  echo "| RSS idle | $(mib "$(rss_kb "$PID_tgmem" VmRSS)") | $(mib "${RSS_IDLE[2]:-0}") (at start) |"
  echo "| peak RSS streaming $STREAM_MIB MiB each way (PUT, echoed) | $(stream "$mem_main" "$PID_tgmem") | $(stream "$P_BARE" "$PID_bare") |"
  idle_conns "$mem_main" "$PID_tgmem"; tg_conns=$CONNS_RESULT
  idle_conns "$P_BARE" "$PID_bare"; bare_conns=$CONNS_RESULT
  echo "| RSS with $IDLE_CONNS idle keep-alive connections | $tg_conns | $bare_conns |"

  # A fresh userinfo-route tokengate that sees every pre-minted token once: its verified-token
  # cache and its userinfo cache then hold one entry per token.
  cm_main=${PORTS[17]}; cm_admin=${PORTS[18]}
  tokengate_config 7 "$cm_main" "$cm_admin" >"$WORK/caches.toml"
  start tgcaches "$BIN/tokengate" serve --config "$WORK/caches.toml"
  wait_http "http://127.0.0.1:$cm_admin/readyz" 30 || die "the cache-memory tokengate did not start: $(tail -n 3 "$WORK/tgcaches.log")"
  cache_idle=$(rss_kb "$PID_tgcaches" VmRSS)
  echo 0 >"$WORK/caches-state"
  calls_before=$(userinfo_calls)
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do
    "${LOAD_PIN[@]}" env BENCH_TOKEN= BENCH_TOKENS="$WORK/tokens.txt" BENCH_TOKEN_STATE="$WORK/caches-state" \
      BENCH_THREADS=1 wrk -t1 -c128 -d10s --timeout 5s -s "$ROOT/bench/wrk.lua" \
      "http://127.0.0.1:$cm_main$REQ_PATH" >"$WORK/caches-wrk.out" 2>&1 || true
    [ "$(cat "$WORK/caches-state")" -ge "$TOKENS" ] 2>/dev/null && break
  done
  filled=$(cat "$WORK/caches-state"); [ "$filled" -gt "$TOKENS" ] && filled=$TOKENS
  calls=$(( $(userinfo_calls) - calls_before ))
  echo "| RSS with $filled cached verified tokens and $calls userinfo entries (fresh process, userinfo route; idle $(mib "$cache_idle")) | $(mib "$(rss_kb "$PID_tgcaches" VmRSS)") | — |"
fi

echo
if [ "$FAILED" = 1 ]; then
  say "bench: some rows failed (see the table)"
  exit 1
fi
