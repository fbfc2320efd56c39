# shellcheck shell=bash
# --- ai_spend: prices, a token limit and budgets on a ModelRouter
# (examples/ai_spend.rs) --- sourced by .ci/examples: start, expect, $addr,
# $log, $pid.
#
# The stand-in model server bills body bytes / 4 input tokens and
# `max_tokens` (50 without it) output tokens. gpt-4o costs 2.5 and 10
# micro-dollars a token, gpt-4o-mini 0.15 and 0.6; each tenant has $0.05 a
# day (then gpt-4o-mini), globex $0.02 ever, every caller 20,000 tokens a
# minute.
start ai_spend --port 0
c="curl -sS --max-time 5"
aspend_chat() { # aspend_chat KEY BODY [CURL ARGS...]: POST /v1/chat/completions
  $c "$addr/v1/chat/completions" -H "authorization: Bearer $1" \
    -H 'content-type: application/json' -d "$2" "${@:3}"
}
aspend_ask() { # aspend_ask MAX_TOKENS: the body of a request for that many
  echo "{\"model\": \"chat\", \"max_tokens\": $1, \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}"
}
aspend_header() { # aspend_header NAME RESPONSE: the header's value
  grep -i "^$1:" <<<"$2" | head -1 | cut -d' ' -f2 | tr -d '\r'
}
aspend_field() { # aspend_field NAME JSON: the first integer field NAME
  grep -o "\"$1\":[0-9]*" <<<"$2" | head -1 | cut -d: -f2
}
# What acme was told its answers cost, summed: the ledger must agree.
aspend_told=0

out=$(aspend_chat acme-key '{"model": "chat", "messages": [{"role": "user", "content": "hello"}]}' -i)
expect '200 OK' "$out" "ai_spend: acme's chat is answered"
expect 'x-switchyard-model: gpt-4o' "$out" "ai_spend: ... by gpt-4o"
expect 'x-ratelimit-remaining-tokens: ' "$out" "ai_spend: ... with the tokens left"
cost=$(aspend_header x-switchyard-cost-micros "$out")
prompt=$(aspend_field prompt_tokens "$out") completion=$(aspend_field completion_tokens "$out")
# 2.5 µ$ an input token, 10 an output token, rounded up: (5p + 20c) / 2.
expect "cost $(((5 * prompt + 20 * completion + 1) / 2))." "cost $cost." \
  "ai_spend: ... and x-switchyard-cost-micros prices its usage ($prompt in, $completion out)"
aspend_told=$((aspend_told + cost))
expect '"code":"invalid_api_key"' "$(aspend_chat wrong-key "$(aspend_ask 10)")" "ai_spend: a wrong key is refused in OpenAI's error shape"

out=$(aspend_chat acme-key '{"model": "chat", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hello"}]}' -iN)
expect 'content-type: text/event-stream' "$out" "ai_spend: a streamed answer is an event stream"
expect 'data: [DONE]' "$out" "ai_spend: ... ending with [DONE]"
after=${out#*"data: [DONE]"}
expect ': x-switchyard-cost-micros: ' "$after" "ai_spend: ... then its cost in a comment line"
cost=$(grep -o ': x-switchyard-cost-micros: [0-9]*' <<<"$after" | awk '{ print $3 }')
aspend_told=$((aspend_told + cost))
# A stream that did not ask for usage: the router asks for it, hides its
# chunk, and still ends with the cost.
out=$(aspend_chat acme-key '{"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hello"}]}' -N)
after=${out#*"data: [DONE]"}
expect ': x-switchyard-cost-micros: ' "$after" "ai_spend: a stream that did not ask for usage ends with its cost too"
if grep -q '"usage"' <<<"$out"; then echo "FAIL: ai_spend: the usage chunk it did not ask for was shown"; exit 1; fi
cost=$(grep -o ': x-switchyard-cost-micros: [0-9]*' <<<"$after" | awk '{ print $3 }')
aspend_told=$((aspend_told + cost))

# About 10,000 µ$ each on gpt-4o: the day's 50,000 run out after four,
# and then the budget sends acme to gpt-4o-mini.
aspend_n=0
for _ in $(seq 10); do
  out=$(aspend_chat acme-key "$(aspend_ask 1000)" -i)
  aspend_n=$((aspend_n + 1))
  aspend_told=$((aspend_told + $(aspend_header x-switchyard-cost-micros "$out")))
  [[ "$out" == *"x-switchyard-model: gpt-4o-mini"* ]] && break
done
expect 'x-switchyard-model: gpt-4o-mini' "$out" "ai_spend: acme's budget downgrades it to gpt-4o-mini"
expect 'x-switchyard-reason: downgraded' "$out" "ai_spend: ... and the reason says so"
expect "after 5." "after $aspend_n." "ai_spend: ... once 4 answers at about \$0.01 spent most of \$0.05"
expect 'budget alert: `tenant-daily` of acme is past 80 %' "$(cat "$log")" "ai_spend: the 80 % alert was raised"

# globex: 15,000 tokens fit its 20,000 a minute once, not twice. (gpt-4o's
# worst case, $0.15, is over the day's budget: gpt-4o-mini answers.)
out=$(aspend_chat globex-key "$(aspend_ask 15000)" -i)
expect '200 OK' "$out" "ai_spend: globex asks for 15,000 tokens"
expect 'x-switchyard-model: gpt-4o-mini' "$out" "ai_spend: ... answered by gpt-4o-mini"
out=$(aspend_chat globex-key "$(aspend_ask 15000)" -i)
expect '429 Too Many Requests' "$out" "ai_spend: again: over the token limit"
expect '"type":"tokens"' "$out" "ai_spend: ... a 429 of type tokens"
expect '"code":"rate_limit_exceeded"' "$out" "ai_spend: ... code rate_limit_exceeded"
expect 'x-ratelimit-reset-tokens: ' "$out" "ai_spend: ... saying when tokens are back"
expect 'x-ratelimit-remaining-tokens: 0' "$out" "ai_spend: ... and that none are left"
# Its trial budget ($0.02 ever) has no room for gpt-4o's $0.02 worst case.
out=$(aspend_chat globex-key "$(aspend_ask 2000)" -i)
expect '429 Too Many Requests' "$out" "ai_spend: globex's trial budget refuses"
expect '"code":"insufficient_quota"' "$out" "ai_spend: ... with insufficient_quota"
expect 'globex-trial' "$out" "ai_spend: ... naming the budget"

out=$($c "$addr/admin/usage?by=tenant")
expect '"by":"tenant"' "$out" "ai_spend: /admin/usage?by=tenant"
acme=$(grep -o '{"key":"acme"[^}]*}' <<<"$out")
expect '"key":"acme"' "$acme" "ai_spend: ... lists acme"
expect "cost $aspend_told." "cost $(aspend_field cost_micros "$acme")." \
  "ai_spend: ... at the cost its answers said, summed (> 0)"
[ "$aspend_told" -gt 0 ] || { echo "FAIL: ai_spend: acme's cost is 0"; exit 1; }
expect '"key":"globex"' "$out" "ai_spend: ... and globex"
expect '"status":400' "$($c "$addr/admin/usage?by=planet")" "ai_spend: an unknown grouping is a 400"
out=$($c "$addr/admin/spend")
expect '"refused_tokens":1,"refused_budget":1,' "$out" "ai_spend: /admin/spend counts the refusals"
expect '"alerts":1,' "$out" "ai_spend: ... and the alert"
expect "\"budget\":\"tenant-daily\",\"key\":\"acme\",\"state\":{\"spent_micros\":$aspend_told," "$out" \
  "ai_spend: ... and acme's day at what it was told"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
