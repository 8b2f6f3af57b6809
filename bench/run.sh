#!/usr/bin/env bash
# bench/run.sh: sekisho against nginx, haproxy and caddy (Debian's packages)
# and a plain httputil.ReverseProxy, end to end, on this machine.
#
# Installs the peers if missing, starts three backends and, scenario after
# scenario, each proxy with an equivalent config (bench/conf.sh), checks that
# every proxy really spreads over the backends, then measures interleaved
# rounds (A B C D, A B C D, ...) with wrk and prints a Markdown table of
# medians and ratios, also written to bench/results-latest.md.
#
# Bounded: the plan is checked against BENCH_DEADLINE before anything starts,
# and measuring stops early (with a warning in the table) if the deadline
# comes anyway. Traffic goes to 127.0.0.1 only. Every process this script
# starts is stopped by its PID on exit, also on failure or interrupt.
#
# Environment (defaults in brackets), see bench/README.md:
#   BENCH_MODE        whole | percore                              [whole]
#   BENCH_DURATION    seconds per measured round                   [5]
#   BENCH_ROUNDS      rounds per target                            [3]
#   BENCH_WARMUP      seconds of warm-up before a target's 1st round [1]
#   BENCH_SCENARIOS   subset of: plain ip_hash shard split scatter tls
#   BENCH_PROXIES     subset of: sekisho refproxy haproxy nginx nginx-1w caddy
#   BENCH_BACKEND     nginx | go  (go = bench/backend)              [nginx]
#   BENCH_CONNECTIONS wrk connections                              [64]
#   BENCH_GOGC        GOGC for the Go proxies (sekisho, refproxy, caddy) [unset]
#   BENCH_DEADLINE    seconds the whole run may take                [570]
#   BENCH_SEKISHO_BIN use this sekisho binary instead of building ./cmd/sekisho
#   BENCH_OUT         results file   [bench/results-latest.md, -percore.md in percore mode]
#   BENCH_KEEP=1      keep the temp dir (configs, logs, raw rounds)
set -euo pipefail

START=$SECONDS
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
export PATH=$PATH:/usr/sbin:/sbin

MODE=${BENCH_MODE:-whole}
DURATION=${BENCH_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-1}
SCENARIOS=${BENCH_SCENARIOS:-plain ip_hash shard split scatter tls}
PROXIES=${BENCH_PROXIES:-sekisho refproxy haproxy nginx nginx-1w caddy}
BACKEND=${BENCH_BACKEND:-nginx}
CONNS=${BENCH_CONNECTIONS:-64}
GOGC_SET=${BENCH_GOGC:-}
DEADLINE=${BENCH_DEADLINE:-570}
if [[ $MODE == percore ]]; then
  OUT=${BENCH_OUT:-$BENCH_DIR/results-latest-percore.md}
else
  OUT=${BENCH_OUT:-$BENCH_DIR/results-latest.md}
fi

ALL_SCENARIOS="plain ip_hash shard split scatter tls"
ALL_PROXIES="sekisho refproxy haproxy nginx nginx-1w caddy"
B1=127.0.0.1:18001 B2=127.0.0.1:18002 B3=127.0.0.1:18003

say() { printf '[bench %3ds] %s\n' $((SECONDS - START)) "$*" >&2; }
die() {
  say "FAIL: $*"
  exit 1
}
has_word() { [[ " $1 " == *" $2 "* ]]; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

for v in DURATION ROUNDS WARMUP CONNS DEADLINE; do
  is_uint "${!v}" || die "BENCH_$v must be a whole number, got '${!v}'"
done
((DURATION >= 1 && ROUNDS >= 1)) || die "BENCH_DURATION and BENCH_ROUNDS must be at least 1"
[[ -z $GOGC_SET ]] || is_uint "$GOGC_SET" || [[ $GOGC_SET == off ]] || die "BENCH_GOGC must be a number or off"
case $MODE in whole | percore) ;; *) die "BENCH_MODE must be whole or percore, got '$MODE'" ;; esac
case $BACKEND in nginx | go) ;; *) die "BENCH_BACKEND must be nginx or go, got '$BACKEND'" ;; esac
for s in $SCENARIOS; do has_word "$ALL_SCENARIOS" "$s" || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"; done
for p in $PROXIES; do has_word "$ALL_PROXIES" "$p" || die "unknown proxy '$p' (known: $ALL_PROXIES)"; done
if [[ $MODE == percore ]]; then
  (($(nproc) >= 2)) || die "percore mode needs 2 CPUs"
  # One nginx worker is the only nginx that fits on one core.
  kept=()
  for p in $PROXIES; do [[ $p == nginx-1w ]] || kept+=("$p"); done
  PROXIES="${kept[*]}"
fi

# targets SCENARIO: the targets measured in SCENARIO, in round order.
targets() {
  local candidates t out=()
  case $1 in
  plain) candidates="sekisho refproxy haproxy nginx nginx-1w caddy" ;;
  # Stage scenarios measure sekisho's plain proxy too (sekisho-plain), in
  # the same interleaved rounds, so that what a stage costs is read against
  # it rather than against another scenario's minutes.
  ip_hash | shard | split) candidates="sekisho-plain sekisho haproxy nginx caddy" ;;
  scatter) candidates="sekisho-plain sekisho" ;;
  tls) candidates="sekisho-plain sekisho nginx caddy" ;;
  esac
  for t in $candidates; do
    has_word "$PROXIES" "${t%-plain}" && out+=("$t")
  done
  echo "${out[*]}"
}

# The plan, and its time, before anything is installed or started.
PLAN_TARGETS=0
for s in $SCENARIOS; do
  n=$(wc -w <<<"$(targets "$s")")
  PLAN_TARGETS=$((PLAN_TARGETS + n))
done
((PLAN_TARGETS > 0)) || die "nothing to measure: no scenario has a selected proxy"
# Per target: warm-up once, then each round's wrk run plus about half a second
# of CPU sampling and result parsing; per scenario about 5 s of start-up and
# spread checks; 30 s for builds and 2 s to measure the background load.
ESTIMATE=$((PLAN_TARGETS * (ROUNDS * DURATION + WARMUP) + PLAN_TARGETS * ROUNDS / 2 + $(wc -w <<<"$SCENARIOS") * 5 + 32))
say "plan: mode=$MODE scenarios=[$SCENARIOS] proxies=[$PROXIES] $PLAN_TARGETS targets x $ROUNDS rounds x ${DURATION}s, estimated ${ESTIMATE}s (deadline ${DEADLINE}s)"
((ESTIMATE <= DEADLINE)) || die "estimated ${ESTIMATE}s exceeds BENCH_DEADLINE=${DEADLINE}s: lower BENCH_DURATION, BENCH_ROUNDS or the scenarios"

# --- processes: every one is recorded and stopped by PID --------------------

WORK=$(mktemp -d /tmp/sekisho-bench.XXXXXX)
mkdir -p "$WORK/bin" "$WORK/log" "$WORK/conf"
PIDS=()               # every long-running process started, in order
declare -A PID_OF=()  # target -> pid, for the current scenario
declare -A URL_OF=()  # target -> URL, for the current scenario
WRK_PID=""
BACKEND_PIDS=()

# descendants PID: PID and its descendants, alive (nginx's workers are
# children of its master). /proc/PID/task/*/children is not there on every
# kernel, so this reads the parent of every process instead.
descendants() {
  # A process may exit between the glob and the read: cat then fails, which
  # must not count as an error under pipefail.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
    {
      line = $0
      pid = substr(line, 1, index(line, " (") - 1)
      sub(/.*\) /, "", line)
      split(line, f, " ")
      parent[pid] = f[2]
    }
    END {
      if (!(root in parent)) exit
      n = 1; queue[1] = root; inset[root] = 1
      for (i = 1; i <= n; i++)
        for (p in parent)
          if (!(p in inset) && parent[p] == queue[i]) { queue[++n] = p; inset[p] = 1 }
      for (i = 1; i <= n; i++) print queue[i]
    }'
}

# start NAME CMD...: run CMD in the background, output to log/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$WORK/log/$name.log" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
}

# stop_pids PID...: SIGTERM each PID, give them 5 s, then SIGKILL whatever is
# left of them and of their descendants (recorded before the TERM, so an
# orphaned worker is not missed).
stop_pids() {
  local p all=() deadline
  for p in "$@"; do
    [[ -n $p ]] || continue
    kill -0 "$p" 2>/dev/null || continue
    mapfile -t -O "${#all[@]}" all < <(descendants "$p")
    kill -TERM "$p" 2>/dev/null || true
  done
  ((${#all[@]})) || return 0
  deadline=$((SECONDS + 5))
  while ((SECONDS < deadline)); do
    local alive=0
    for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1 && break; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $WRK_PID ]] && stop_pids "$WRK_PID"
  # Newest first: proxies before the backends they talk to.
  local i rev=()
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do rev+=("${PIDS[i]}"); done
  ((${#rev[@]})) && stop_pids "${rev[@]}"
  if ((rc != 0)) || [[ ${BENCH_KEEP:-} == 1 ]]; then
    say "configs, logs and raw rounds kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_log() {
  if [[ -f $WORK/log/$1.log ]]; then tail -n 20 "$WORK/log/$1.log" | sed 's/^/    /' >&2; fi
}

# --- peers, builds, certificate ----------------------------------------------

install_peers() {
  local missing=() pkg
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v caddy >/dev/null || missing+=(caddy)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
  ((${#missing[@]})) || return 0
  ((EUID == 0)) || die "missing ${missing[*]}: run as root or apt-get install them"
  say "installing ${missing[*]} from Debian's packages"
  timeout 180 apt-get update -qq >"$WORK/log/apt.log" 2>&1 || die "apt-get update failed (see $WORK/log/apt.log)"
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "${missing[@]}" >>"$WORK/log/apt.log" 2>&1 ||
    die "apt-get install ${missing[*]} failed (see $WORK/log/apt.log)"
  # The packages may start their distro services (on ports 80 and 443, not
  # ours); stop them so they do not take CPU during the runs.
  for pkg in nginx haproxy caddy; do
    if has_word "${missing[*]}" "$pkg"; then service "$pkg" stop >/dev/null 2>&1 || true; fi
  done
}

build() {
  cd "$ROOT"
  local pkg
  for pkg in backend refproxy report; do
    go build -o "$WORK/bin/$pkg" "./bench/$pkg" || die "go build ./bench/$pkg failed"
  done
  if has_word "$PROXIES" sekisho; then
    if [[ -n ${BENCH_SEKISHO_BIN:-} ]]; then
      [[ -x $BENCH_SEKISHO_BIN ]] || die "BENCH_SEKISHO_BIN=$BENCH_SEKISHO_BIN is not an executable"
      cp "$BENCH_SEKISHO_BIN" "$WORK/bin/sekisho"
    elif ! go build -o "$WORK/bin/sekisho" ./cmd/sekisho 2>"$WORK/log/build-sekisho.log"; then
      sed 's/^/    /' "$WORK/log/build-sekisho.log" >&2
      die "go build ./cmd/sekisho failed; fix it, or leave sekisho out: BENCH_PROXIES='refproxy haproxy nginx nginx-1w caddy'"
    fi
  fi
}

make_cert() {
  CERT=$WORK/conf/cert.pem KEY=$WORK/conf/key.pem
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$KEY" -out "$CERT" >"$WORK/log/openssl.log" 2>&1 || die "openssl could not make a certificate"
  # haproxy and others read the key as whichever user they run as.
  chmod 644 "$KEY"
}

# --- pinning -------------------------------------------------------------------

if [[ $MODE == percore ]]; then
  PIN_PROXY=(taskset -c 1)
  PIN_SIDE=(taskset -c 0) # backends and wrk
  WRK_THREADS=1
  GO_PROCS=1
  NGINX_AUTO=1
else
  PIN_PROXY=()
  PIN_SIDE=()
  WRK_THREADS=2
  GO_PROCS=""
  NGINX_AUTO=auto
fi
# GO_ENV prefixes the command of a Go proxy.
GO_ENV=(env)
[[ -z $GO_PROCS ]] || GO_ENV+=("GOMAXPROCS=$GO_PROCS")
[[ -z $GOGC_SET ]] || GO_ENV+=("GOGC=$GOGC_SET")

start_backends() {
  if [[ $BACKEND == nginx ]]; then
    mkdir -p "$WORK/backend-nginx/tmp"
    conf_nginx_backend 1 >"$WORK/conf/backend-nginx.conf"
    start backend-nginx "${PIN_SIDE[@]}" nginx -e "$WORK/backend-nginx/error.log" \
      -p "$WORK/backend-nginx" -c "$WORK/conf/backend-nginx.conf"
    BACKEND_PIDS+=("$LAST_PID")
    local i addr
    for i in 1 2 3; do
      addr=B$i
      wait_http "backend b$i" "http://${!addr}/" "$LAST_PID" backend-nginx
    done
  else
    local i addr
    for i in 1 2 3; do
      addr=B$i
      start "backend-b$i" "${PIN_SIDE[@]}" env ${GO_PROCS:+GOMAXPROCS=$GO_PROCS} "$WORK/bin/backend" -listen "${!addr}" -name "b$i"
      BACKEND_PIDS+=("$LAST_PID")
      wait_http "backend b$i" "http://${!addr}/" "$LAST_PID" "backend-b$i"
    done
  fi
}

# wait_http WHAT URL PID LOG [curl args]: wait up to 15 s for a 200 from URL,
# failing early if PID has died.
wait_http() {
  local what=$1 url=$2 pid=$3 log=$4
  shift 4
  local deadline=$((SECONDS + 15)) code
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || {
      show_log "$log"
      die "$what exited during start-up (log above)"
    }
    code=$(curl -s --noproxy '*' -k -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.2
  done
  show_log "$log"
  die "$what did not answer 200 at $url within 15 s (last status $code)"
}

# --- targets -------------------------------------------------------------------

scenario_index() {
  local i=1 s
  for s in $ALL_SCENARIOS; do
    [[ $s == "$1" ]] && echo "$i" && return
    i=$((i + 1))
  done
}

# start_target SCENARIO TARGET: write its config, start it, wait until it
# answers; sets PID_OF[TARGET] and URL_OF[TARGET].
start_target() {
  local scenario=$1 target=$2 idx port name dir scheme=http
  idx=$(scenario_index "$scenario")
  [[ $scenario == tls ]] && scheme=https
  name="$scenario-$target"
  case $target in
  sekisho | sekisho-plain)
    port=$((18100 + idx))
    local kind=$scenario
    [[ $target == sekisho-plain ]] && port=$((18700 + idx)) kind=plain scheme=http
    conf_sekisho "$kind" "$port" $((port + 50)) >"$WORK/conf/$name.yaml"
    start "$name" "${PIN_PROXY[@]}" "${GO_ENV[@]}" "$WORK/bin/sekisho" run -config "$WORK/conf/$name.yaml"
    ;;
  refproxy)
    port=$((18200 + idx))
    local tls=()
    [[ $scenario == tls ]] && tls=(-cert "$CERT" -key "$KEY")
    start "$name" "${PIN_PROXY[@]}" "${GO_ENV[@]}" "$WORK/bin/refproxy" -listen "127.0.0.1:$port" \
      -backends "$B1,$B2,$B3" "${tls[@]}"
    ;;
  haproxy)
    port=$((18300 + idx))
    conf_haproxy "$scenario" "$port" >"$WORK/conf/$name.cfg"
    haproxy -c -q -f "$WORK/conf/$name.cfg" >"$WORK/log/$name.check" 2>&1 || {
      cat "$WORK/log/$name.check" >&2
      die "haproxy rejects $WORK/conf/$name.cfg"
    }
    start "$name" "${PIN_PROXY[@]}" haproxy -db -f "$WORK/conf/$name.cfg"
    ;;
  nginx | nginx-1w)
    local workers=$NGINX_AUTO
    port=$((18400 + idx))
    [[ $target == nginx-1w ]] && port=$((18500 + idx)) workers=1
    dir=$WORK/$name
    mkdir -p "$dir"
    conf_nginx "$scenario" "$port" "$workers" "$dir" >"$WORK/conf/$name.conf"
    start "$name" "${PIN_PROXY[@]}" nginx -e "$dir/error.log" -p "$dir" -c "$WORK/conf/$name.conf"
    ;;
  caddy)
    port=$((18600 + idx))
    dir=$WORK/$name
    mkdir -p "$dir"
    conf_caddy "$scenario" "$port" >"$WORK/conf/$name.Caddyfile"
    start "$name" "${PIN_PROXY[@]}" "${GO_ENV[@]}" HOME="$dir" XDG_DATA_HOME="$dir" XDG_CONFIG_HOME="$dir" \
      caddy run --adapter caddyfile --config "$WORK/conf/$name.Caddyfile"
    ;;
  esac
  PID_OF[$target]=$LAST_PID
  URL_OF[$target]="$scheme://127.0.0.1:$port/"
  local probe=()
  [[ $scenario == shard || $scenario == split ]] && probe=(-H "X-User-ID: user-1")
  wait_http "$target ($scenario)" "${URL_OF[$target]}" "$LAST_PID" "$name" "${probe[@]}"
}

# probe URL COUNT [OPTS...]: COUNT requests to URL in one curl process,
# printing "status backend" per request. In OPTS, {i} stands for the
# request's number (1..COUNT), so each request can have its own header or
# source address.
probe() {
  local url=$1 count=$2 i opt
  shift 2
  local args=()
  for ((i = 1; i <= count; i++)); do
    ((i > 1)) && args+=(--next)
    args+=(-s --noproxy '*' -k --max-time 5 -o /dev/null -w '%{http_code} %header{x-echo-name}\n')
    for opt in "$@"; do args+=("${opt//\{i\}/$i}"); done
    args+=("$url")
  done
  curl "${args[@]}" || true
}

# spread_check SCENARIO TARGET: the target must use all three backends, and
# keyed scenarios must be sticky: a key always lands on the same backend (for
# split: the same arm).
spread_check() {
  local scenario=$1 target=$2 url=${URL_OF[$2]} out again
  case $scenario in
  ip_hash)
    # Source addresses 127.0.N.1: nginx's ip_hash only hashes the first
    # three octets of an IPv4 address.
    out=$(probe "$url" 30 --interface "127.0.{i}.1")
    again=$(probe "$url" 3 --interface 127.0.7.1)
    ;;
  shard)
    out=$(probe "$url" 30 -H "X-User-ID: user-{i}")
    again=$(probe "$url" 3 -H "X-User-ID: user-42")
    ;;
  split)
    out=$(probe "$url" 200 -H "X-User-ID: user-{i}")
    # b1 and b2 are the control arm, balanced round robin.
    again=$(probe "$url" 3 -H "X-User-ID: user-42" | sed 's/ b[12]$/ control/')
    ;;
  scatter)
    # Every answer must merge all three leaves.
    local body i
    for i in 1 2 3 4 5; do
      body=$(curl -s --noproxy '*' --max-time 5 "$url") || die "$target ($scenario): request failed"
      [[ $body == *'"b1"'* && $body == *'"b2"'* && $body == *'"b3"'* ]] ||
        die "$target ($scenario): answer does not merge all three leaves: $body"
    done
    say "  $target merges b1 b2 b3 in every answer"
    return 0
    ;;
  *)
    out=$(probe "$url" 30)
    ;;
  esac
  local bad names
  bad=$(grep -cv '^200 ' <<<"$out" || true)
  ((bad == 0)) || die "$target ($scenario): $bad non-200 answers during the spread check: $(sort <<<"$out" | uniq -c | tr '\n' ' ')"
  names=$(awk '{print $2}' <<<"$out" | sort -u | tr '\n' ' ')
  [[ $names == "b1 b2 b3 " ]] || die "$target ($scenario) does not spread over the three backends (saw: ${names:-none})"
  if [[ -n ${again:-} ]]; then
    names=$(sort -u <<<"$again" | wc -l)
    ((names == 1)) || die "$target ($scenario): the same key reached $names backends: $(tr '\n' ' ' <<<"$again")"
  fi
  if [[ $scenario == split ]]; then
    local v2
    v2=$(grep -c ' b3$' <<<"$out" || true)
    ((v2 >= 8 && v2 <= 40)) || die "$target (split): $v2 of 200 users went to the 10 % arm, want about 20"
  fi
  say "  $target spreads over $(awk '{print $2}' <<<"$out" | sort | uniq -c | awk '{printf "%s:%s ", $2, $1}')"
}

# --- measuring -------------------------------------------------------------------

RAW=$WORK/rounds.tsv
CLK_TCK=$(getconf CLK_TCK)
PARTIAL=""
ERRORS=0

# run_wrk SECONDS SCRIPT URL: wrk in the background (so a signal stops it at
# once), bounded by timeout; its output in $WORK/wrk.out.
run_wrk() {
  local secs=$1 script=$2 url=$3
  BENCH_WRK_DIR=$BENCH_DIR/wrk timeout $((secs + 15)) "${PIN_SIDE[@]}" \
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s -s "$script" "$url" >"$WORK/wrk.out" 2>&1 &
  WRK_PID=$!
  local rc=0
  wait "$WRK_PID" || rc=$?
  WRK_PID=""
  ((rc == 0)) || {
    sed 's/^/    /' "$WORK/wrk.out" >&2
    die "wrk failed (exit $rc) against $url"
  }
}

# sample PID: one scan of /proc, printing "busy proxy backends": the CPU
# ticks the machine has spent not idle since boot, and those of PID and of
# the backends (each with their descendants). One scan keeps the sampling
# short even on a loaded machine.
sample() {
  { cat /proc/stat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v proxy="$1" -v backends="${BACKEND_PIDS[*]}" '
      function tree(root,   queue, inset, n, i, p, total) {
        n = 1; queue[1] = root; inset[root] = 1
        for (i = 1; i <= n; i++)
          for (p in parent)
            if (!(p in inset) && parent[p] == queue[i]) { queue[++n] = p; inset[p] = 1 }
        total = 0
        for (i = 1; i <= n; i++) if (queue[i] in ticks) total += ticks[queue[i]]
        return total
      }
      $1 == "cpu" { busy = $2 + $3 + $4 + $7 + $8 + $9; next }
      !/^[0-9]+ \(/ { next }
      {
        line = $0
        pid = substr(line, 1, index(line, " (") - 1)
        sub(/.*\) /, "", line)
        split(line, f, " ")
        parent[pid] = f[2]; ticks[pid] = f[12] + f[13]
      }
      END {
        nb = split(backends, b, " "); bt = 0
        for (i = 1; i <= nb; i++) bt += tree(b[i])
        print busy, tree(proxy), bt
      }'
}

# times_ticks FILE: the children's CPU ticks in the output of `times`
# (its second line), which is wrk's CPU once wrk has been reaped.
times_ticks() {
  sed -n 2p "$1" | awk -v k="$CLK_TCK" '{
      t = 0
      for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
      printf "%d", t * k + 0.5
    }'
}

# measure SCENARIO TARGET ROUND: one wrk run against TARGET. Besides wrk's
# figures it records the CPU ticks of the proxy (with its children), and the
# CPU used meanwhile by everything that is neither the proxy, the backends
# nor wrk, which says whether the round was disturbed.
measure() {
  local scenario=$1 target=$2 round=$3 pid=${PID_OF[$2]} url=${URL_OF[$2]}
  local script=$BENCH_DIR/wrk/report.lua
  [[ $scenario == shard || $scenario == split ]] && script=$BENCH_DIR/wrk/users.lua
  kill -0 "$pid" 2>/dev/null || {
    show_log "$scenario-$target"
    die "$target ($scenario) has exited"
  }
  ((round > 1 || WARMUP == 0)) || run_wrk "$WARMUP" "$script" "$url"
  local t0 t1 busy0 busy1 proxy0 proxy1 back0 back1
  t0=$EPOCHREALTIME
  read -r busy0 proxy0 back0 < <(sample "$pid")
  # `times` is a builtin: run here, not in a subshell, it reports this
  # shell's reaped children, and only wrk is reaped between the two calls.
  times >"$WORK/times0"
  run_wrk "$DURATION" "$script" "$url"
  times >"$WORK/times1"
  read -r busy1 proxy1 back1 < <(sample "$pid")
  t1=$EPOCHREALTIME
  kill -0 "$pid" 2>/dev/null || {
    show_log "$scenario-$target"
    die "$target ($scenario) exited during round $round"
  }
  local cpu=$((proxy1 - proxy0)) wrk_ticks
  wrk_ticks=$(($(times_ticks "$WORK/times1") - $(times_ticks "$WORK/times0")))
  local other=$(((busy1 - busy0) - cpu - (back1 - back0) - wrk_ticks))
  ((other >= 0)) || other=0
  # As a percentage of one core over the sampling window.
  local other_pct
  other_pct=$(awk -v o="$other" -v k="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", o / k / (b - a) * 100 }')

  local line
  line=$(grep '^BENCH_RESULT ' "$WORK/wrk.out") || {
    sed 's/^/    /' "$WORK/wrk.out" >&2
    die "no result line from wrk for $target ($scenario)"
  }
  local -A r=()
  local kv
  for kv in ${line#BENCH_RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  local errs=$((r[connect] + r[read] + r[write] + r[status] + r[timeout]))
  if ((errs > 0)); then
    ERRORS=$((ERRORS + errs))
    say "  WARNING: $target ($scenario) round $round: $errs errors (connect ${r[connect]}, read ${r[read]}, write ${r[write]}, status>=400 ${r[status]}, timeout ${r[timeout]})"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$target" "$round" \
    "${r[requests]}" "${r[duration_us]}" "${r[p50_us]}" "${r[p99_us]}" "$cpu" "$CLK_TCK" "$errs" "$other_pct" >>"$RAW"
  say "  round $round $target: $(awk -v n="${r[requests]}" -v d="${r[duration_us]}" -v u="${r[p99_us]}" -v t="$cpu" -v k="$CLK_TCK" \
    'BEGIN { printf "%.0f req/s, p99 %.2f ms, CPU %.3f s/10k", n / d * 1e6, u / 1000, (n > 0 ? t / k / n * 1e4 : 0) }'), other CPU $other_pct%"
}

run_scenario() {
  local scenario=$1 t round
  local list
  read -r -a list <<<"$(targets "$scenario")"
  ((${#list[@]})) || return 0
  say "scenario $scenario: ${list[*]}"
  local started=()
  PID_OF=() URL_OF=()
  for t in "${list[@]}"; do
    start_target "$scenario" "$t"
    started+=("${PID_OF[$t]}")
  done
  for t in "${list[@]}"; do
    if [[ $t == sekisho-plain ]]; then spread_check plain "$t"; else spread_check "$scenario" "$t"; fi
  done
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${list[@]}"; do
      local need=$((DURATION + 3))
      ((round == 1)) && need=$((need + WARMUP))
      if ((SECONDS - START + need > DEADLINE)); then
        PARTIAL="stopped early at the ${DEADLINE}s deadline: $scenario round $round and later were not measured"
        say "WARNING: $PARTIAL"
        break 2
      fi
      measure "$scenario" "$t" "$round"
    done
  done
  stop_pids "${started[@]}"
}

# background_cpu: percent of one core the machine spends busy over 2 s while
# nothing of the benchmark runs; anything far above 0 will disturb it.
background_cpu() {
  local a b t0 t1
  a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
  t0=$EPOCHREALTIME
  sleep 2
  b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
  t1=$EPOCHREALTIME
  awk -v d=$((b - a)) -v k="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", d / k / (b - a) * 100 }'
}

# --- report ---------------------------------------------------------------------

version_of() {
  case $1 in
  nginx) nginx -v 2>&1 | sed 's/.*version: //' ;;
  haproxy) haproxy -v 2>/dev/null | head -n 1 | awk '{print $3}' ;;
  caddy) caddy version 2>/dev/null | awk '{print $1}' ;;
  wrk) wrk -v 2>&1 | head -n 1 | awk '{print $2}' ;;
  go) go version | awk '{print $3}' ;;
  esac
}

header() {
  local commit sekisho=sekisho
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
  git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || commit+=", uncommitted changes"
  if [[ -x $WORK/bin/sekisho ]]; then
    sekisho=$("$WORK/bin/sekisho" version 2>/dev/null | head -n 1 || true)
  fi
  local gomax
  gomax="default ($(nproc))"
  [[ -n $GO_PROCS ]] && gomax=$GO_PROCS
  cat <<EOF
# sekisho benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')

- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), kernel $(uname -r)
- mode: **$MODE** — $(if [[ $MODE == percore ]]; then echo "proxy pinned to CPU 1 (GOMAXPROCS=1, nbthread 1, 1 nginx worker); backends and wrk -t1 on CPU 0"; else echo "nothing pinned; proxy, backends and wrk -t$WRK_THREADS share all CPUs"; fi)
- load: wrk -t$WRK_THREADS -c$CONNS, ${DURATION}s per round, $ROUNDS rounds interleaved per scenario, ${WARMUP}s warm-up per target; figures are medians over rounds
- backends: three, $(if [[ $BACKEND == nginx ]]; then echo "one nginx worker answering a fixed 100-byte body on three ports"; else echo "bench/backend (Go) with a fixed 100-byte body"; fi)
- versions: ${sekisho:-sekisho} (git $commit), nginx $(version_of nginx), haproxy $(version_of haproxy), caddy $(version_of caddy), wrk $(version_of wrk), $(version_of go)
- Go proxies (sekisho, refproxy, caddy): GOGC=${GOGC_SET:-unset (sekisho applies its built-in 400, refproxy and caddy run at 100)}, GOMAXPROCS=$gomax
- background CPU before the run: ${BACKGROUND}% of one core (the "other CPU %" column is the same during each round; a quiet machine shows a few %)
EOF
}

report() {
  {
    header
    echo
    if [[ -n $PARTIAL ]]; then
      printf '**Partial run: %s.**\n\n' "$PARTIAL"
    fi
    if ((ERRORS > 0)); then
      printf '**%s failed or non-2xx responses: the flagged rows are not to be trusted.**\n\n' "$ERRORS"
    fi
    local busy=0
    [[ $MODE == whole ]] || busy=90
    "$WORK/bin/report" -refs haproxy,nginx,caddy,sekisho-plain -min-busy "$busy" -max-other 25 <"$RAW"
    cat <<'EOF'

Ratios are row ÷ reference, measured in the same scenario of this run, in the
order req/s · p50 · p99 · CPU: above 1 the row serves more requests, or
takes longer, or burns more CPU per request, than the reference. In the
scatter scenario the reference is sekisho's plain proxy, so the ratios are
the cost of the stage. See bench/README.md.
EOF
  } >"$WORK/results.md"
  cp "$WORK/results.md" "$OUT"
  cp "$RAW" "${OUT%.md}.tsv"
  cat "$WORK/results.md"
}

# --- main ------------------------------------------------------------------------

# shellcheck source=bench/conf.sh
source "$BENCH_DIR/conf.sh"
install_peers
say "building into $WORK/bin"
build
make_cert
: >"$RAW"
BACKGROUND=$(background_cpu)
((BACKGROUND < 20)) || say "WARNING: the machine is already ${BACKGROUND}% busy (of one core) without the benchmark; figures will be disturbed"
start_backends
for s in $SCENARIOS; do
  run_scenario "$s"
  [[ -z $PARTIAL ]] || break
done
report
say "done in $((SECONDS - START))s; table written to $OUT"
((ERRORS == 0)) || die "$ERRORS failed or non-2xx responses (rows flagged in the table)"
