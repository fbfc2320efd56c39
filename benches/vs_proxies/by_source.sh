#!/usr/bin/env bash
# Where a proxied request's instructions come from, by source file: how
# the README's *Whose instructions they are* was read.
#
#   benches/vs_proxies/by_source.sh              # builds, then measures
#   benches/vs_proxies/by_source.sh BINARY       # a `gateway` built already
#   BY_SOURCE_RUSTFLAGS="-Cprofile-use=…" benches/vs_proxies/by_source.sh
#
# Without BINARY, builds the `gateway` example with the release profile
# and line tables (`debug = "line-tables-only"`: the same code, and each
# instruction's source file known, inlined or not) in target/by-source.
# Serves the bench's split (`switchyard.toml`, one serving thread) on
# CPU 1 under callgrind, with this host's cache sizes simulated, over two
# nginx upstreams on CPU 0; `wrk -c8` warms it for 5 s, then 10 s are
# measured; `by_source.py` divides the cost by the requests served.
# Uses ports 28080-28082. Needs valgrind, nginx, wrk, taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in valgrind callgrind_control nginx wrk taskset python3 curl; do
    if ! command -v "$tool" > /dev/null 2>&1; then
        echo "by_source.sh: needs $tool (apt-get install -y valgrind nginx wrk curl python3)" >&2
        exit 1
    fi
done

bin=${1:-}
if [ -z "$bin" ]; then
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only RUSTFLAGS="${BY_SOURCE_RUSTFLAGS:-}" \
        cargo build --release --example gateway --all-features --target-dir target/by-source
    bin=target/by-source/release/examples/gateway
fi

. benches/vs_proxies/upstreams.sh
upstreams benches/vs_proxies/switchyard.toml

taskset -c 1 valgrind --tool=callgrind --cache-sim=yes --dump-instr=yes \
    --I1=32768,8,64 --D1=32768,8,64 --LL=8388608,16,64 --instr-atstart=no \
    --callgrind-out-file="$dir/callgrind.out" \
    "$bin" --config "$dir/gateway.toml" --listen 127.0.0.1:28080 \
    --admin-listen 127.0.0.1:0 --no-access-log > "$dir/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
    curl -s -o /dev/null 127.0.0.1:28080/ && break
    sleep 1
done

taskset -c 0 wrk -t1 -c8 -d5s http://127.0.0.1:28080/ > /dev/null
callgrind_control -i on "$bin" > /dev/null
taskset -c 0 wrk -t1 -c8 -d10s http://127.0.0.1:28080/ > "$dir/wrk.txt"
callgrind_control -i off "$bin" > /dev/null
callgrind_control -d "$bin" > /dev/null
sleep 1
requests=$(awk '/requests in/ { print $1 }' "$dir/wrk.txt")
out=$(ls -t "$dir"/callgrind.out.* | head -1)
echo "by_source.sh: $requests requests measured ($out)"
python3 benches/vs_proxies/by_source.py "$out" "$requests"
