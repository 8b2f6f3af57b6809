#!/usr/bin/env bash
# `make testssl`: testssl.sh's protocol, cipher, server-default and
# vulnerability checks against sekisho TLS listeners on 127.0.0.1, one with
# an ECDSA certificate and one with an RSA certificate (each key type has its
# own suites), both with the default TLS settings. Traffic goes to 127.0.0.1
# only. Everything started here is stopped on exit.
#
# It fails when a listener offers a CBC suite, or when testssl.sh rates any
# finding outside the certificate checks (self-signed here, by design) worse
# than OK or INFO. Reports go to $OUT (default bin/testssl/).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
OUT=${OUT:-$BIN/testssl}
ECDSA_PORT=${ECDSA_PORT:-18443}
RSA_PORT=${RSA_PORT:-18444}

command -v testssl >/dev/null || { echo "testssl: not installed (make testssl installs Debian's testssl.sh)" >&2; exit 1; }
for port in "$ECDSA_PORT" "$RSA_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "testssl: 127.0.0.1:$port is taken; set ECDSA_PORT / RSA_PORT" >&2
    exit 1
  fi
done

rm -rf "$OUT" && mkdir -p "$OUT/tls"
go run ./scripts/gencert -dir "$OUT/tls"   # ECDSA P-256: tls.crt, tls.key
openssl req -x509 -newkey rsa:2048 -nodes -days 90 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$OUT/tls/rsa.key" -out "$OUT/tls/rsa.crt" 2>/dev/null

cat >"$OUT/sekisho.yaml" <<EOF
version: 1
admin: {listen: "off"}
log: {level: warn, access: "off"}
listeners:
  - name: ecdsa
    listen: 127.0.0.1:$ECDSA_PORT
    tls: {certificates: [{cert_file: $OUT/tls/tls.crt, key_file: $OUT/tls/tls.key}]}
    routes: [{name: all, pipeline: [{respond: {status: 200, body: "ok\n"}}]}]
  - name: rsa
    listen: 127.0.0.1:$RSA_PORT
    tls: {certificates: [{cert_file: $OUT/tls/rsa.crt, key_file: $OUT/tls/rsa.key}]}
    routes: [{name: all, pipeline: [{respond: {status: 200, body: "ok\n"}}]}]
EOF

"$BIN/sekisho" validate -config "$OUT/sekisho.yaml" >/dev/null
"$BIN/sekisho" run -config "$OUT/sekisho.yaml" -watch=false 2>"$OUT/sekisho.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT INT TERM
for port in "$ECDSA_PORT" "$RSA_PORT"; do
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$OUT/sekisho.log" >&2; exit 1; }
    sleep 0.1
  done
done

status=0
for l in "ecdsa:$ECDSA_PORT" "rsa:$RSA_PORT"; do
  name=${l%%:*} port=${l#*:}
  echo "== testssl.sh against the $name listener (127.0.0.1:$port)"
  # -p protocols, -s cipher categories, -E every cipher per protocol,
  # -S server defaults (session tickets), -U every vulnerability check.
  testssl --quiet --color 0 --warnings off --mapping iana --sneaky \
    -p -s -E -S -U \
    --logfile "$OUT/$name.log" --jsonfile "$OUT/$name.json" \
    "127.0.0.1:$port" >/dev/null || true
  # Cipher lines of -E: hexcode, OpenSSL name, kx, cipher, bits, IANA name.
  offered=$(grep -E '^ x[0-9a-f]+ ' "$OUT/$name.log" || true)
  echo "offered suites:"; echo "$offered" | sed 's/^/  /'
  if echo "$offered" | grep -q 'CBC'; then
    echo "FAIL: a CBC suite is offered" >&2; status=1
  fi
  # The flat JSON: one object per finding, its "id" line before its
  # "severity" and "finding" lines. Certificate findings (cert_*, chain of
  # trust, OCSP, CAA...) are about the self-signed test certificate.
  # TLS_session_ticket is known (docs/tls.md): testssl.sh reads the 7-day
  # lifetime hint crypto/tls writes into every TLS 1.3 ticket (a constant),
  # not the key rotation, which it cannot see.
  findings=$(awk -F'"' '
    $2 == "id"       { id = $4 }
    $2 == "severity" { sev = $4 }
    $2 == "finding"  { if (sev ~ /^(LOW|MEDIUM|HIGH|CRITICAL|WARN)$/) print sev ": " id ": " $4 }
  ' "$OUT/$name.json")
  known=$(echo "$findings" | grep -E ': TLS_session_ticket: ' || true)
  bad=$(echo "$findings" | grep -vE ': (cert_|intermediate_|DNS_CAArecord|OCSP_|TLS_session_ticket)' | grep -v '^$' || true)
  [ -z "$known" ] || echo "known: $known"
  if [ -n "$bad" ]; then
    echo "FAIL: findings rated worse than INFO:" >&2; echo "$bad" >&2; status=1
  else
    echo "no other finding rated worse than INFO outside the certificate checks"
  fi
  grep -E 'VULNERABLE|potentially' "$OUT/$name.log" | grep -vi 'not vulnerable' | sed 's/^/  /' || true
done
exit $status
