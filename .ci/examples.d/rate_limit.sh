# Probe for examples/rate_limit.rs; sourced by .ci/examples (start, expect,
# $addr, $log, $pid come from there).
c="curl -sS --max-time 5"

start rate_limit --port 0

# rl_hit MAX CURL-ARGS...: sends the request until it is refused (at most MAX
# times); leaves the last response, headers included and lowercased, in
# $rl_out and the number of requests allowed before it in $rl_ok.
rl_hit() {
  local max=$1 i
  shift
  rl_ok=0
  for ((i = 0; i < max; i++)); do
    rl_out=$($c -si "$@")
    rl_out=${rl_out,,}
    if [[ "$rl_out" == "http/1.1 429"* ]]; then return 0; fi
    rl_ok=$((rl_ok + 1))
  done
  return 0
}
rl_between() { # rl_between LO HI N WHAT
  if (($3 < $1 || $3 > $2)); then echo "FAIL: $4: $3, wanted $1 to $2"; exit 1; fi
  echo "ok: $4 ($3)"
}

# --- (a) per client IP, X-Forwarded-For believed from 127.0.0.1 ---
xff="x-forwarded-for: 203.0.113.7"
rl_hit 10 -H "$xff" "$addr/public"
expect "http/1.1 429" "$rl_out" "rate_limit: /public answers 429 past the per-ip burst"
rl_between 5 7 "$rl_ok" "rate_limit: requests allowed from 203.0.113.7 first (burst 5)"
expect "content-type: application/problem+json" "$rl_out" "rate_limit: the 429 is problem+json"
expect '"status":429' "$rl_out" "rate_limit: problem document has status 429"
expect '"policy":"per-ip"' "$rl_out" "rate_limit: problem document names the quota"
expect "retry-after: 1" "$rl_out" "rate_limit: per-ip 429 has Retry-After"
expect 'ratelimit: "per-ip";r=0;' "$rl_out" "rate_limit: per-ip 429 has RateLimit"
expect 'ratelimit-policy: "per-ip";q=2;w=1' "$rl_out" "rate_limit: per-ip 429 has RateLimit-Policy"
expect "hello 203.0.113.8" "$($c -H 'x-forwarded-for: 203.0.113.8' "$addr/public")" "rate_limit: another forwarded client has its own quota"
expect "hello 127.0.0.1" "$($c "$addr/public")" "rate_limit: without X-Forwarded-For the key is the peer"
# An untrusted peer (127.0.0.2 is loopback on Linux, but not a trusted
# proxy) cannot pick its key: its X-Forwarded-For is ignored.
if out=$($c --interface 127.0.0.2 -H "$xff" "$addr/public" 2>/dev/null); then
  expect "hello 127.0.0.2" "$out" "rate_limit: X-Forwarded-For from an untrusted peer is ignored"
else
  echo "skip: rate_limit: cannot connect from 127.0.0.2 here"
fi

# --- (b) per API key, two quotas ---
expect "401" "$($c -o /dev/null -w '%{http_code}' "$addr/api/cheap")" "rate_limit: no API key is a 401"
out=$($c -si -H 'x-api-key: alice-key' "$addr/api/cheap")
out=${out,,}
expect "http/1.1 200" "$out" "rate_limit: alice's first call passes"
# 9 of the burst of 10 are left, but `r` never says more than the policy's q=5.
expect 'ratelimit: "per-second";r=5;t=1, "per-minute";r=19;' "$out" "rate_limit: a 200 carries RateLimit for both quotas"
expect 'ratelimit-policy: "per-second";q=5;w=1, "per-minute";q=20;w=60' "$out" "rate_limit: a 200 carries RateLimit-Policy"
rl_hit 15 -H 'x-api-key: alice-key' "$addr/api/cheap"
expect "http/1.1 429" "$rl_out" "rate_limit: alice gets a 429 past her burst"
rl_between 9 11 "$rl_ok" "rate_limit: further calls allowed to alice (burst 10)"
expect '"policy":"per-second"' "$rl_out" "rate_limit: refused by the per-second quota"
expect "retry-after: 1" "$rl_out" "rate_limit: per-second 429 has Retry-After: 1"
expect 'ratelimit: "per-second";r=0;' "$rl_out" "rate_limit: per-second 429 has RateLimit"
expect 'ratelimit-policy: "per-second";q=5;w=1, "per-minute";q=20;w=60' "$rl_out" "rate_limit: 429 has RateLimit-Policy"
expect "a cheap answer for bob" "$($c -H 'x-api-key: bob-key' "$addr/api/cheap")" "rate_limit: bob has his own quotas"

# --- (c) cost: /api/expensive takes 5 units ---
rl_hit 4 -H 'x-api-key: carol-key' "$addr/api/expensive"
expect "http/1.1 429" "$rl_out" "rate_limit: carol gets a 429 on expensive calls"
rl_between 2 2 "$rl_ok" "rate_limit: expensive calls fitting in a burst of 10 units"
expect '"policy":"per-second"' "$rl_out" "rate_limit: the expensive 429 is the per-second quota's"
# Keep calling once a second: the per-second quota lets one expensive call
# through each time, until carol has used the 20 units of her minute.
for _ in $(seq 6); do
  sleep 1
  rl_hit 1 -H 'x-api-key: carol-key' "$addr/api/expensive"
  if [[ "$rl_out" == *'"policy":"per-minute"'* ]]; then break; fi
done
expect '"policy":"per-minute"' "$rl_out" "rate_limit: sustained expensive calls hit the per-minute quota"
expect "rate limit \`per-minute\` exceeded" "$rl_out" "rate_limit: per-minute problem detail"
retry=$(grep -o 'retry-after: [0-9]*' <<<"$rl_out" | grep -o '[0-9]*$' || true)
rl_between 2 60 "${retry:-0}" "rate_limit: per-minute Retry-After is longer"
unset rl_out rl_ok xff retry
