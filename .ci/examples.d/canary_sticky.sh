# Probe for examples/canary_sticky.rs; sourced by .ci/examples (start, expect,
# $addr, $log, $pid come from there).
c="curl -sS --max-time 5"

# --- ramped by hand ---
start canary_sticky --port 0
expect "blue v1" "$($c -H 'x-user: alice' "$addr/")" "canary_sticky: everyone on blue at 0 %"
expect '"on_green":0' "$($c "$addr/admin/report")" "canary_sticky: the report starts at 0 %"

# Besides the example's own 1000 simulated users, follow 40 users over HTTP
# through every step: once on green, a user must stay on green.
declare -A cs_was=()
cs_back=0
cs_green=0
cs_step() { # cs_step PERCENT|next: ramp, then ask every user which version answers
  local out u v
  out=$($c -X POST "$addr/admin/ramp/$1")
  expect '"moved_back_to_blue":0' "$out" "canary_sticky: POST /admin/ramp/$1 moves nobody back (its summary)"
  cs_green=0
  for u in $(seq 40); do
    v=$($c -H "x-user: http-user-$u" "$addr/")
    if [[ "${cs_was[$u]:-}" == "green v2" && "$v" != "green v2" ]]; then cs_back=$((cs_back + 1)); fi
    if [[ "$v" == "green v2" ]]; then cs_green=$((cs_green + 1)); fi
    cs_was[$u]=$v
  done
}
cs_step 1
cs_step 10
cs_step next   # 50
out=$($c "$addr/admin/report")
expect '"green_percent":50' "$out" "canary_sticky: next goes from 10 % to 50 %"
if (( cs_green == 0 || cs_green == 40 )); then echo "FAIL: canary_sticky: $cs_green of 40 HTTP users on green at 50 %"; exit 1; fi
echo "ok: canary_sticky: $cs_green of 40 HTTP users on green at 50 %"
cs_step next   # 100
expect "moved back: 0." "moved back: $cs_back." "canary_sticky: no user followed over HTTP moved back to blue"
expect "green v2" "$($c -H 'x-user: alice' "$addr/")" "canary_sticky: everyone on green at 100 %"

out=$($c "$addr/admin/report")
expect '"weights":{"blue":0,"green":100}' "$out" "canary_sticky: report shows the weights"
expect '"green_percent":100,"on_green":1000' "$out" "canary_sticky: all 1000 simulated users on green at 100 %"
expect '"moved_back_while_ramping_up":0' "$out" "canary_sticky: report: 0 users moved back while ramping up"
for p in 1 10 50; do
  n=$(grep -o "\"green_percent\":$p,\"on_green\":[0-9]*" <<<"$out" | grep -o '[0-9]*$' || true)
  # Sticky hashing gives each step its share of users, give or take.
  n=${n:-0}
  lo=$((p * 10 * 6 / 10)); hi=$((p * 10 * 14 / 10 + 5))
  if (( n < lo || n > hi )); then echo "FAIL: canary_sticky: $n users on green at $p %"; exit 1; fi
  echo "ok: canary_sticky: $n of 1000 users on green at $p %"
done

expect '"status":409' "$($c -X POST "$addr/admin/ramp/next")" "canary_sticky: no step after 100 %"
expect "422" "$($c -o /dev/null -w '%{http_code}' -X POST "$addr/admin/ramp/101")" "canary_sticky: 101 % is refused"
# Lowering the share is a rollback: users do move back, and the report says
# so without counting it against the ramp.
out=$($c -X POST "$addr/admin/ramp/0")
expect '"on_green":0' "$out" "canary_sticky: ramp to 0 % puts everyone back on blue"
expect '"moved_back_while_ramping_up":0' "$($c "$addr/admin/report")" "canary_sticky: a rollback is not a ramp-up"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

# --- ramped by the timer ---
start canary_sticky --port 0 --auto --every 0.3
out=
for _ in $(seq 50); do
  out=$($c "$addr/admin/report")
  [[ "$out" == *'"green_percent":100'* ]] && break
  sleep 0.1
done
expect '"green_percent":1,' "$out" "canary_sticky --auto: steps through 1 %"
expect '"green_percent":10,' "$out" "canary_sticky --auto: steps through 10 %"
expect '"green_percent":50,' "$out" "canary_sticky --auto: steps through 50 %"
expect '"green_percent":100,"on_green":1000' "$out" "canary_sticky --auto: reaches 100 %"
expect '"moved_back_while_ramping_up":0' "$out" "canary_sticky --auto: 0 users moved back"
expect "[ramp] green 100 %" "$(cat "$log")" "canary_sticky --auto: logs each step"
unset cs_was cs_back cs_green
