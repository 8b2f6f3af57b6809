#!/usr/bin/env bash
# The demo behind `make run`: sekisho-echo backends on 127.0.0.1:90xx and
# sekisho serving config.example.yaml. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
mkdir -p .demo
[ -f .demo/tls/tls.crt ] || go run ./scripts/gencert -dir .demo/tls

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

backend() { # name port
  "$BIN/sekisho-echo" -listen "127.0.0.1:$2" -name "$1" &
  pids+=($!)
}
backend web-v1-a 9001; backend web-v1-b 9002; backend web-v2 9003
backend users-0a 9011; backend users-0b 9012; backend users-1a 9013
backend users-1b 9014; backend users-2a 9015; backend users-2b 9016
backend search-0a 9021; backend search-0b 9022; backend search-1a 9023
backend search-1b 9024; backend search-2a 9025; backend search-2b 9026
backend shadow 9031

"$BIN/sekisho" validate -config config.example.yaml
SEKISHO_ACCESS_LOG=${SEKISHO_ACCESS_LOG:-.demo/access.log} "$BIN/sekisho" run -config config.example.yaml &
pids+=($!)

for _ in $(seq 50); do
  curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null && break
  sleep 0.2
done

cat <<'TRY'

sekisho is serving config.example.yaml (access log: .demo/access.log). Try:

  curl -i http://127.0.0.1:8080/hello                                  # respond stage
  curl -s http://127.0.0.1:8080/ | head -c 300; echo                   # split 90/10 over web-v1 / web-v2
  curl -s -H 'X-Sekisho-Arm: v2' http://127.0.0.1:8080/ | head -c 120  # force the v2 arm
  curl -si -H 'X-User-ID: alice' http://127.0.0.1:8080/users/alice | grep -i x-sekisho-shard
  curl -s 'http://127.0.0.1:8080/search?q=patents' ; echo              # scatter-gather, top 10
  curl -si http://127.0.0.1:8080/secure/page | head -3                 # HTTP -> HTTPS redirect
  curl -sk --http2 https://127.0.0.1:8443/ -o /dev/null -w '%{http_version}\n'
  curl -s http://127.0.0.1:9901/pools ; curl -s http://127.0.0.1:9901/shards
  curl -s http://127.0.0.1:9901/metrics | grep ^sekisho_ | head
  curl -s -XPOST http://127.0.0.1:9901/reload                          # or edit config.example.yaml

Ctrl-C stops the demo.
TRY
wait
