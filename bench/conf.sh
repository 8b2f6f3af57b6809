# shellcheck shell=bash
# conf.sh: the configuration templates of the benchmark, sourced by run.sh.
#
# Each function prints one config for one proxy and one scenario on stdout.
# All proxies get the same job: three backends, round robin unless the
# scenario says otherwise, keep-alive to the client and to the backends (64
# idle connections per backend where the proxy has such a knob), no access
# log, no health checks, no retries that the others would not do.
#
# Inputs, set by run.sh: B1 B2 B3 (backend host:port), CERT KEY (PEM files
# for the tls scenario), MODE (whole | percore), WORK (the run's temp dir).
#
# Scenarios and what each peer runs for them:
#   plain    round robin over b1 b2 b3
#   ip_hash  hash of the client address (sekisho ip_hash, haproxy
#            balance source, nginx ip_hash, caddy lb_policy ip_hash)
#   shard    hash of X-User-ID over three one-backend shards (sekisho shard
#            stage; haproxy balance hdr() with hash-type consistent; nginx
#            hash ... consistent; caddy lb_policy header)
#   split    90/10 on X-User-ID: 90 % to a pool of b1 b2, 10 % to b3
#            (sekisho split stage; haproxy crc32 of the header mod 100;
#            nginx split_clients; caddy has no hash split, so it sends the
#            users whose id ends in 0 to b3, which is 10 % of the 1000
#            users wrk sends)
#   scatter  sekisho only: fan out to three one-backend leaves and merge
#   tls      plain, with TLS terminated by the proxy (same cert for all)

# backend_body NAME: the backends' fixed ~100-byte JSON reply, byte for byte
# the one of bench/backend.
backend_body() {
  local head="{\"backend\":\"$1\",\"results\":[{\"id\":\"$1\",\"score\":1}],\"pad\":\""
  local tail='"}'
  local pad=$((100 - ${#head} - ${#tail} - 1))
  printf '%s%s%s' "$head" "$(printf 'x%.0s' $(seq 1 "$pad"))" "$tail"
}

# conf_nginx_backend WORKERS: one nginx answering on the three backend ports,
# the cheapest backend this machine has, so the measurement is the proxy's.
conf_nginx_backend() {
  local workers=$1 name port
  cat <<EOF
worker_processes $workers;
daemon off;
master_process on;
pid $WORK/backend-nginx/nginx.pid;
error_log $WORK/backend-nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/json;
  client_body_temp_path $WORK/backend-nginx/tmp;
EOF
  for name in b1 b2 b3; do
    case $name in b1) port=${B1##*:} ;; b2) port=${B2##*:} ;; b3) port=${B3##*:} ;; esac
    cat <<EOF
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / {
      add_header X-Echo-Name $name;
      return 200 '$(backend_body "$name")\n';
    }
  }
EOF
  done
  echo "}"
}

# conf_sekisho SCENARIO PORT ADMIN_PORT
conf_sekisho() {
  local scenario=$1 port=$2 admin=$3
  cat <<EOF
version: 1
admin: {listen: "127.0.0.1:$admin"}
log: {level: error, access: "off"}
listeners:
  - name: bench
    listen: "127.0.0.1:$port"
EOF
  if [[ $scenario == tls ]]; then
    cat <<EOF
    tls:
      certificates:
        - {cert_file: "$CERT", key_file: "$KEY"}
EOF
  fi
  cat <<EOF
    routes:
      - name: all
        match: {path_prefix: /}
        pipeline:
EOF
  case $scenario in
  plain | tls | ip_hash)
    local balance=round_robin
    [[ $scenario == ip_hash ]] && balance=ip_hash
    cat <<EOF
          - proxy: backends
pools:
  backends:
    endpoints: ["$B1", "$B2", "$B3"]
    balance: $balance
    max_idle_per_endpoint: 64
EOF
    ;;
  shard)
    cat <<EOF
          - shard:
              key: header:X-User-ID
              shards: [shard-0, shard-1, shard-2]
pools:
  shard-0: {endpoints: ["$B1"], max_idle_per_endpoint: 64}
  shard-1: {endpoints: ["$B2"], max_idle_per_endpoint: 64}
  shard-2: {endpoints: ["$B3"], max_idle_per_endpoint: 64}
EOF
    ;;
  split)
    cat <<EOF
          - split:
              name: bench
              key: header:X-User-ID
              arms:
                - {name: control, weight: 90, pipeline: [{proxy: web-v1}]}
                - {name: v2, weight: 10, pipeline: [{proxy: web-v2}]}
pools:
  web-v1: {endpoints: ["$B1", "$B2"], balance: round_robin, max_idle_per_endpoint: 64}
  web-v2: {endpoints: ["$B3"], max_idle_per_endpoint: 64}
EOF
    ;;
  scatter)
    cat <<EOF
          - scatter:
              leaves: [leaf-0, leaf-1, leaf-2]
              timeout: 1s
              merge: {array: results, sort_by: score, order: desc, limit: 10}
pools:
  leaf-0: {endpoints: ["$B1"], max_idle_per_endpoint: 64}
  leaf-1: {endpoints: ["$B2"], max_idle_per_endpoint: 64}
  leaf-2: {endpoints: ["$B3"], max_idle_per_endpoint: 64}
EOF
    ;;
  *) return 1 ;;
  esac
}

# conf_nginx SCENARIO PORT WORKERS DIR
conf_nginx() {
  local scenario=$1 port=$2 workers=$3 dir=$4
  local listen="127.0.0.1:$port backlog=4096"
  [[ $scenario == tls ]] && listen+=" ssl"
  cat <<EOF
worker_processes $workers;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $dir/tmp-body;
  proxy_temp_path $dir/tmp-proxy;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
EOF
  local pass=http://backends
  case $scenario in
  plain | tls | ip_hash | shard)
    local balance=""
    [[ $scenario == ip_hash ]] && balance="ip_hash;"
    [[ $scenario == shard ]] && balance="hash \$http_x_user_id consistent;"
    cat <<EOF
  upstream backends {
    $balance
    server $B1; server $B2; server $B3;
    keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s;
  }
EOF
    ;;
  split)
    # shellcheck disable=SC2016 # $arm is nginx's variable
    pass='http://$arm'
    cat <<EOF
  split_clients "\${http_x_user_id}" \$arm { 90% web_v1; * web_v2; }
  upstream web_v1 {
    server $B1; server $B2;
    keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s;
  }
  upstream web_v2 {
    server $B3;
    keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s;
  }
EOF
    ;;
  *) return 1 ;;
  esac
  cat <<EOF
  server {
    listen $listen;
EOF
  [[ $scenario == tls ]] && cat <<EOF
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
EOF
  cat <<EOF
    location / { proxy_pass $pass; }
  }
}
EOF
}

# conf_haproxy SCENARIO PORT
conf_haproxy() {
  local scenario=$1 port=$2
  cat <<EOF
global
  maxconn 4096
EOF
  [[ $MODE == percore ]] && echo "  nbthread 1"
  cat <<EOF
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s
frontend bench
  bind 127.0.0.1:$port
EOF
  case $scenario in
  plain | ip_hash | shard)
    local balance="balance roundrobin"
    [[ $scenario == ip_hash ]] && balance="balance source"
    [[ $scenario == shard ]] && balance=$'balance hdr(X-User-ID)\n  hash-type consistent'
    cat <<EOF
  default_backend backends
backend backends
  $balance
  server b1 $B1
  server b2 $B2
  server b3 $B3
EOF
    ;;
  split)
    cat <<EOF
  use_backend web_v2 if { req.hdr(X-User-ID),crc32,mod(100) lt 10 }
  default_backend web_v1
backend web_v1
  balance roundrobin
  server b1 $B1
  server b2 $B2
backend web_v2
  server b3 $B3
EOF
    ;;
  *) return 1 ;;
  esac
}

# conf_caddy SCENARIO PORT
conf_caddy() {
  local scenario=$1 port=$2
  local transport="transport http {
      keepalive 300s
      keepalive_idle_conns 192
      keepalive_idle_conns_per_host 64
    }"
  cat <<EOF
{
  admin off
  auto_https disable_redirects
  log {
    level ERROR
  }
}
EOF
  local site="http://:$port"
  [[ $scenario == tls ]] && site="https://:$port"
  echo "$site {"
  echo "  bind 127.0.0.1"
  [[ $scenario == tls ]] && echo "  tls $CERT $KEY"
  case $scenario in
  plain | tls | ip_hash | shard)
    local policy=round_robin
    [[ $scenario == ip_hash ]] && policy=ip_hash
    [[ $scenario == shard ]] && policy="header X-User-ID"
    cat <<EOF
  reverse_proxy $B1 $B2 $B3 {
    lb_policy $policy
    $transport
  }
EOF
    ;;
  split)
    cat <<EOF
  @v2 header_regexp X-User-ID 0\$
  handle @v2 {
    reverse_proxy $B3 {
      $transport
    }
  }
  handle {
    reverse_proxy $B1 $B2 {
      lb_policy round_robin
      $transport
    }
  }
EOF
    ;;
  *) return 1 ;;
  esac
  echo "}"
}
