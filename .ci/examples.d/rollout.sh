# --- rollout --- (sourced by .ci/examples: start, expect, $addr, $log, $pid)
# An automated canary on real time: it must abort by itself when green
# starts failing, and promote green when it stays healthy; both runs end on
# their own and exit 0.
c="curl -sS --max-time 5"
rollout_wait() { # rollout_wait SECONDS WHAT: waits for the example to exit by itself
  local _
  for _ in $(seq $(($1 * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then cat "$log"; echo "FAIL: $2: still running after $1 s"; exit 1; fi
  local status=0
  wait "$pid" || status=$?
  pid=
  expect "exit 0" "exit $status" "$2: exits 0 by itself"
}

start rollout --fail-at 3 --port 0
expect '"state":{"state":"running"}' "$($c "$addr/status")" "rollout: GET /status while it runs"
rollout_wait 20 "rollout --fail-at 3"
out=$(cat "$log")
expect "green   starts answering 500" "$out" "rollout: green fails at 3 s"
expect "verdict FAIL" "$out" "rollout: the analysis fails green"
expect "final state: aborted, traffic is back on blue" "$out" "rollout: the rollout aborts by itself"
expect "weights now: blue 100, green 0" "$out" "rollout: ... and blue has all the traffic"
expect "all served by blue" "$out" "rollout: ... and serves it"

start rollout --healthy --port 0
rollout_wait 20 "rollout --healthy"
out=$(cat "$log")
expect "step 4  green gets 100 %" "$out" "rollout: the healthy canary walks every step"
expect "final state: promoted" "$out" "rollout: ... and is promoted"
expect "weights now: blue 0, green 100" "$out" "rollout: ... with all the traffic"
expect "all served by green" "$out" "rollout: ... and serves it"
