# shellcheck shell=bash
# --- compose_axum: every layer on one axum app (examples/compose_axum.rs) ---
# Sourced by .ci/examples after `start` and `expect` are defined.
start compose_axum --port 0
c="curl -sS --max-time 5"
st="$c -o /dev/null -w %{http_code}"
alice="x-api-key: alice-key"
ops="x-api-key: ops-key"

expect 200 "$($st "$addr/")" "compose_axum: / is public"
expect 401 "$($st "$addr/api/orders")" "compose_axum: no key on /api/orders is 401"
expect 'error="invalid_token"' "$($c -i -H 'x-api-key: wrong' "$addr/api/orders")" "compose_axum: a wrong key is 401 invalid_token"
expect 400 "$($st -H 'authorization: Bearer' "$addr/api/orders")" "compose_axum: Bearer without a token is 400"
out=$($c -i -H "$alice" "$addr/api/admin")
expect 403 "$out" "compose_axum: alice lacks scope admin"
expect "application/problem+json" "$out" "compose_axum: the 403 is problem+json"
expect '"missing_scopes":["admin"]' "$out" "compose_axum: the 403 names the missing scope"
expect 200 "$($st -H "$ops" "$addr/api/admin")" "compose_axum: ops reaches /api/admin"

out=$($c -H "$alice" "$addr/api/orders")
expect "orders of alice (x-user alice)" "$out" "compose_axum: alice reads orders, sticky key from the transform"
expect "trace: auth -> ratelimit -> transform -> scopes -> mirror -> split:" "$out" "compose_axum: the layers run in order"
expect "$(head -1 <<<"$out")" "$($c -H "$alice" "$addr/api/orders" | head -1)" "compose_axum: alice keeps her version"
expect "green v2" "$($c -H "$alice" -H 'x-switchyard-target: green' "$addr/api/orders")" "compose_axum: a tester reaches green"
expect "x-caller alice" "$($c -H "$alice" -H 'x-caller: mallory' "$addr/debug/order")" "compose_axum: /debug/order, x-caller from the identity"
expect "went through: auth -> ratelimit -> transform" "$($c "$addr/debug/order")" "compose_axum: /debug/order shows the order"

expect 404 "$($st -H "$alice" "$addr/nope")" "compose_axum: unknown path is 404 with a key"
expect 404 "$($st "$addr/nope")" "compose_axum: unknown path is 404 without a key"
expect 405 "$($st -X POST -H "$alice" "$addr/api/orders")" "compose_axum: POST /api/orders is 405"

# The shadow runs on its own task: give it a moment to log.
for _ in $(seq 20); do grep -q '^\[mirror\] next v3 got a copy: x-caller alice' "$log" && break; sleep 0.1; done
expect "[mirror] next v3 got a copy: x-caller alice, x-switchyard-mirror 1, trace: auth -> ratelimit -> transform -> scopes" \
  "$(cat "$log")" "compose_axum: GET /api/orders is mirrored to next v3"

# Burst 20 per caller: alice runs out, ops (another identity) does not.
codes=$(for _ in $(seq 30); do $st -H "$alice" "$addr/api/orders"; echo; done | sort | uniq -c)
expect 429 "$codes" "compose_axum: alice is rate limited past the burst"
# Tokens come back at 5 a second: under load, a request after the loop may
# find one; ask again until one is refused (the burst is spent in a few).
for _ in $(seq 40); do
  out=$($c -i -H "$alice" "$addr/api/orders")
  [[ "$out" == *"retry-after:"* ]] && break
done
expect "retry-after:" "$out" "compose_axum: the 429 says when to retry"
expect 200 "$($st -H "$ops" "$addr/api/orders")" "compose_axum: the limit is per identity"
