#!/usr/bin/env bash
# A profile-guided build of the `gateway` example, optimized again with
# BOLT when `llvm-bolt` is at hand: the build the README's *Profile-guided
# build* rows measure.
#
#   benches/vs_proxies/pgo.sh            # → target/pgo/gateway
#   PGO_DIR=/elsewhere benches/vs_proxies/pgo.sh
#   cargo bench --bench vs_proxies -- --compare target/pgo/gateway
#
# A proxied request runs more code than the CPU's instruction cache holds
# (the README's *Why those instructions cost more*); a build laid out by
# where a proxy's requests actually go (hot paths together, cold ones
# away, inlining by what runs) fetches fewer lines a request. The steps:
#
# 1. an instrumented build (`-Cprofile-generate`);
# 2. training: `benches/vs_proxies.rs` sends it the bench's traffic (the
#    split and the demo pipeline, pinned and as shipped, one short round
#    each; `--gateway` serves switchyard's row with this build);
# 3. `llvm-profdata merge`, then the build that uses the profile
#    (`-Cprofile-use`, and `--emit-relocs` for BOLT);
# 4. with BOLT: that build instrumented by `llvm-bolt -instrument`, trained
#    the same way, then reordered (`-reorder-blocks=ext-tsp
#    -reorder-functions=cdsort -split-functions`).
#
# The profile is the bench's own traffic: a build trained on it is tuned
# for what it is then measured on. Train yours on your routes (the same
# steps, your load). The LLVM tools must be the major version rustc was
# built with (`rustc -vV`); Debian's packages `llvm-N` and `bolt-N` have
# them. Needs what the bench needs: nginx, haproxy, wrk, taskset.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${PGO_DIR:-$PWD/target/pgo}
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')

need() {
    if ! command -v "$1" > /dev/null 2>&1; then
        echo "pgo.sh: needs $1 (apt-get install -y $2)" >&2
        exit 1
    fi
}
profdata=llvm-profdata-$llvm
need "$profdata" "llvm-$llvm"
for tool in nginx haproxy wrk; do
    need "$tool" "nginx haproxy wrk"
done
need taskset util-linux
bolt=llvm-bolt-$llvm
merge=merge-fdata-$llvm
if command -v "$bolt" > /dev/null 2>&1 && command -v "$merge" > /dev/null 2>&1; then
    with_bolt=1
else
    with_bolt=0
    echo "pgo.sh: no $bolt: a PGO build only (apt-get install -y bolt-$llvm adds BOLT)"
fi

build() { # TARGET_DIR RUSTFLAGS
    RUSTFLAGS="${RUSTFLAGS:-} $2" cargo build --release --example gateway --all-features --target-dir "$1"
}

train() { # BINARY
    for mode in pinned shipped; do
        cargo bench --bench vs_proxies --all-features -- --gateway "$1" --mode "$mode" \
            --pipeline --rounds 1 --secs 5 --warmup-secs 1 --quiet-secs 1
    done
}

mkdir -p "$out"
echo "pgo.sh: 1. the instrumented build ($out/generate)"
build "$out/generate" "-Cprofile-generate=$out/profiles"
# The build scripts it ran were instrumented too: their profiles go.
rm -rf "$out/profiles"
mkdir -p "$out/profiles"

echo "pgo.sh: 2. training it"
train "$out/generate/release/examples/gateway"
if ! compgen -G "$out/profiles/*.profraw" > /dev/null; then
    echo "pgo.sh: training wrote no profile (did the bench run?)" >&2
    exit 1
fi

echo "pgo.sh: 3. the profile-guided build ($out/use)"
"$profdata" merge -o "$out/merged.profdata" "$out"/profiles/*.profraw
flags="-Cprofile-use=$out/merged.profdata"
if [ "$with_bolt" = 1 ]; then
    flags="$flags -Clink-arg=-Wl,--emit-relocs"
fi
build "$out/use" "$flags"
built="$out/use/release/examples/gateway"

if [ "$with_bolt" = 1 ]; then
    echo "pgo.sh: 4. BOLT"
    rm -rf "$out/bolt"
    mkdir -p "$out/bolt"
    "$bolt" "$built" -instrument -o "$out/bolt/gateway-instrumented" \
        --instrumentation-file="$out/bolt/profile" --instrumentation-file-append-pid
    train "$out/bolt/gateway-instrumented"
    "$merge" "$out"/bolt/profile.*.fdata > "$out/bolt/merged.fdata"
    "$bolt" "$built" -o "$out/gateway" -data="$out/bolt/merged.fdata" \
        -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions \
        -split-all-cold -split-eh -icf=1
else
    cp "$built" "$out/gateway"
fi
echo "pgo.sh: built $out/gateway"
echo "compare it with the plain build: cargo bench --bench vs_proxies -- --compare $out/gateway"
