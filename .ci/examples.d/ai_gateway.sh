# --- ai_gateway --- (sourced by .ci/examples: start, expect, $addr, $pid)
# Two stand-in model servers behind a ModelRouter: the `chat` alias, a
# stream, token counts, an unknown model, the fallback after a break.
start ai_gateway --port 0
c="curl -sS --max-time 5"
aig_chat() { # aig_chat KEY BODY [CURL ARGS...]: POST /v1/chat/completions
  $c "$addr/v1/chat/completions" -H "authorization: Bearer $1" \
    -H 'content-type: application/json' -d "$2" "${@:3}"
}
aig_hello='{"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}'

out=$(aig_chat demo-key "$aig_hello" -i)
expect '"object":"chat.completion"' "$out" "ai_gateway: chat completion through the alias"
expect 'x-switchyard-model: chat-v' "$out" "ai_gateway: the version that answered is named"
expect '"model":"chat-v' "$out" "ai_gateway: the upstream got a version, not the alias"
out=$(aig_chat wrong-key "$aig_hello" -i)
expect '401 Unauthorized' "$out" "ai_gateway: a wrong key is a 401"
expect '"code":"invalid_api_key"' "$out" "ai_gateway: ... in OpenAI's error shape"
out=$(aig_chat acme-key "$aig_hello" -i)
expect 'x-switchyard-model: chat-v2' "$out" "ai_gateway: tenant acme is pinned to chat-v2"
expect 'x-switchyard-reason: pinned' "$out" "ai_gateway: ... and the reason says so"

out=$(aig_chat demo-key '{"model": "chat", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "tell me a story"}]}' -iN)
expect 'content-type: text/event-stream' "$out" "ai_gateway: a streamed answer is an event stream"
expect '"object":"chat.completion.chunk"' "$out" "ai_gateway: ... of chunks"
expect '"usage":{"prompt_tokens":4' "$out" "ai_gateway: ... with usage at the end"
expect 'data: [DONE]' "$out" "ai_gateway: ... ending with [DONE]"
out=$(aig_chat demo-key '{"model": "chat", "stream": true, "messages": [{"role": "user", "content": "tell me a story"}]}' -N)
expect 'data: [DONE]' "$out" "ai_gateway: a stream that did not ask for usage ends with [DONE]"
if grep -q '"prompt_tokens"' <<<"$out"; then
  echo "FAIL: ai_gateway: ... and shows no usage chunk: got $out"; exit 1
else
  echo "ok: ai_gateway: ... and shows no usage chunk (the router counted it and hid it)"
fi

expect '"id":"chat"' "$($c "$addr/v1/models" -H 'authorization: Bearer demo-key')" "ai_gateway: /v1/models lists the alias"
out=$(aig_chat demo-key '{"model": "gpt-9", "messages": []}' -i)
expect '404 Not Found' "$out" "ai_gateway: an unknown model is a 404"
expect '"code":"model_not_found"' "$out" "ai_gateway: ... in OpenAI's error shape"

# 2 + 2 + 4 + 4 prompt words were sent to versions of chat (the 404 reached
# none); the stream that did not ask for usage is counted too (the router
# asked for it on its behalf).
stats=$($c "$addr/admin/models")
prompt=$(grep -o '"prompt_tokens":[0-9]*' <<<"$stats" | awk -F: '{ n += $2 } END { print n + 0 }')
completion=$(grep -o '"completion_tokens":[0-9]*' <<<"$stats" | awk -F: '{ n += $2 } END { print n + 0 }')
expect "prompt 12, completion 40" "prompt $prompt, completion $completion" "ai_gateway: /admin/models counts the tokens of JSON and streamed answers"

# The words come 50 ms apart: the first byte must arrive long before the
# last, or the gateway buffered the stream.
times=$(aig_chat demo-key '{"model": "chat", "stream": true, "messages": []}' -N -o /dev/null \
  -w '%{time_starttransfer} %{time_total}')
expect "streamed" "$(awk '{ print ($2 - $1 > 0.2) ? "streamed" : "buffered: " $0 }' <<<"$times")" \
  "ai_gateway: ... passed on as it comes, not buffered"

expect "green answers 500" "$($c -X POST "$addr/admin/break/green")" "ai_gateway: break green"
out=$(aig_chat acme-key "$aig_hello" -i)
expect 'x-switchyard-model: chat-v1' "$out" "ai_gateway: acme falls back to chat-v1 while green is broken"
expect 'x-switchyard-reason: fallback' "$out" "ai_gateway: ... and the reason says so"
v2=$($c "$addr/admin/models" | grep -o '"model":"chat-v2".*')
expect '"5xx":1},"errors":0,"fallbacks":1,' "$v2" "ai_gateway: the failed attempt counts on chat-v2, as a fallback"
expect "green answers" "$($c -X POST "$addr/admin/fix/green")" "ai_gateway: fix green"

expect '"versions":{"chat-v1":0,"chat-v2":100}' "$($c -X POST "$addr/admin/models/chat/promote/chat-v2")" "ai_gateway: promote chat-v2"
expect 'x-switchyard-model: chat-v2' "$(aig_chat demo-key "$aig_hello" -i)" "ai_gateway: everyone on chat-v2 after promote"
expect '"versions":{"chat-v1":90,"chat-v2":10}' "$($c -X POST "$addr/admin/models/chat/rollback")" "ai_gateway: rollback to 90/10"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
