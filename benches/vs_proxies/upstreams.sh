# Sourced by by_source.sh and moves.sh (not run on its own): a scratch
# directory ($dir), the processes to stop on exit ($pids), two nginx
# upstreams on CPU 0 (blue on 127.0.0.1:28081, green on 28082, each
# answering its colour, keep-alive without a request limit), and the
# gateway's configuration over them ($dir/gateway.toml: the bench's
# CONFIG, one serving thread).

dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2> /dev/null || true
    done
}
trap cleanup EXIT

# upstreams CONFIG
upstreams() {
    cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $dir/nginx.err;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:28081; location / { return 200 "blue\n"; } }
  server { listen 127.0.0.1:28082; location / { return 200 "green\n"; } }
}
CONF
    taskset -c 0 nginx -c "$dir/nginx.conf" -p "$dir" &
    pids+=($!)
    sed -e 's/BLUE_ADDR/127.0.0.1:28081/' -e 's/GREEN_ADDR/127.0.0.1:28082/' \
        "$1" > "$dir/gateway.toml"
    printf '\n[server]\nthreads = 1\n' >> "$dir/gateway.toml"
}
