#!/usr/bin/env bash
# Bytes a proxied request moves with memcpy, by call site: how the
# README's "bytes moved a request" was read.
#
#   benches/vs_proxies/moves.sh [BINARY] [CONFIG]
#
# BINARY defaults to target/release/examples/gateway (build it first:
# `cargo build --release --example gateway --all-features`), CONFIG to the
# bench's split (`switchyard.toml`; `switchyard_pipeline.toml` for the
# pipeline, whose API key wrk sends). Serves it on CPU 1 with one thread
# over two nginx upstreams on CPU 0, with `moves.c` preloaded; `wrk -c8`
# warms it for 2 s, then 3 s are counted. Prints the bytes and calls a
# request and the largest call sites, by function. Uses ports 28080-28082.
# Needs gcc, nginx, wrk, taskset, addr2line, python3, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/examples/gateway}
config=${2:-benches/vs_proxies/switchyard.toml}
. benches/vs_proxies/upstreams.sh
gcc -O2 -shared -fPIC -o "$dir/moves.so" benches/vs_proxies/moves.c -ldl
upstreams "$config"

MOVES_OUT="$dir/moves.out" LD_PRELOAD="$dir/moves.so" taskset -c 1 "$bin" \
    --config "$dir/gateway.toml" --listen 127.0.0.1:28080 \
    --admin-listen 127.0.0.1:0 --no-access-log > "$dir/gateway.log" 2>&1 &
gateway=$!
pids+=($gateway)
key="x-api-key: bench-key"
for _ in $(seq 50); do
    curl -s -o /dev/null -H "$key" 127.0.0.1:28080/ && break
    sleep 0.2
done
taskset -c 0 wrk -t1 -c8 -d2s -H "$key" http://127.0.0.1:28080/ > /dev/null
kill -USR1 "$gateway"
taskset -c 0 wrk -t1 -c8 -d3s -H "$key" http://127.0.0.1:28080/ > "$dir/wrk.txt"
kill -USR2 "$gateway"
sleep 0.5
cp "/proc/$gateway/maps" "$dir/maps"
python3 - "$bin" "$dir" <<'PY'
import os, subprocess, sys
binary, d = sys.argv[1], sys.argv[2]
real = os.path.realpath(binary)
base = None
for line in open(f"{d}/maps"):
    f = line.split()
    if len(f) >= 6 and os.path.realpath(f[5]) == real:
        base = int(f[0].split("-")[0], 16) - int(f[2], 16)
        break
requests = int(open(f"{d}/wrk.txt").read().split("requests in")[0].split()[-1])
rows = []
for line in open(f"{d}/moves.out"):
    ra, size, calls = line.split()
    rows.append((int(size) * int(calls) / requests, int(calls) / requests, int(size), int(ra, 16) - base))
rows.sort(reverse=True)
top = [r for r in rows if r[1] >= 0.5][:30]
names = subprocess.run(["addr2line", "-f", "-C", "-e", binary] + [hex(r[3]) for r in top],
                       capture_output=True, text=True).stdout.split("\n")[0::2]
print(f"{requests} requests: {sum(r[0] for r in rows):.0f} bytes and "
      f"{sum(r[1] for r in rows):.1f} memcpy calls a request")
print("bytes/req  calls/req  size  function")
for r, name in zip(top, names):
    print(f"{r[0]:9.0f} {r[1]:10.2f} {r[2]:5d}  {name[:110]}")
PY
