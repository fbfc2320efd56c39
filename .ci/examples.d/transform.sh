# Probes examples/transform.rs; sourced by .ci/examples (start, expect, $addr, $log).
c="curl -sS --max-time 5"
start transform --port 0
json="content-type: application/json"

expect '[[sets]]' "$(cat "$log")" "transform: prints its TOML"
expect 'sets[0]("typo").request.headers.add[0]: template `{user.id}`' "$(cat "$log")" "transform: prints the build error of the broken rule"

out=$($c -i "$addr/api/users/42?q=blue&page=2" -H 'x-user: ada' -H 'x-debug: 1' -H "$json" \
  -d '{"name": "Ada", "password": "hunter2", "age": 36}')
expect '"uri": "/v2/users/42?search=blue&page=2"' "$out" "transform: path regex with a capture, query rename"
expect '"x-forwarded-user: ada"' "$out" "transform: header rename"
expect '"x-user-id: 42"' "$out" "transform: header add from {path.id}"
expect '"user-agent: switchyard-demo"' "$out" "transform: header replace"
expect '"via: 1.1 switchyard"' "$out" "transform: header append"
if [[ "$out" == *x-debug* ]]; then echo "FAIL: transform: x-debug was not removed: $out"; exit 1; fi
echo "ok: transform: header remove"
if [[ "$out" == *hunter2* ]]; then echo "FAIL: transform: the password reached the handler: $out"; exit 1; fi
echo "ok: transform: JSON body remove"
expect '\"display_name\":\"Ada\"' "$out" "transform: JSON body rename"
expect '\"meta\":{\"user\":\"ada\",\"user_id\":\"42\",\"version\":2}' "$out" "transform: JSON body set from {header.x-user} and {path.id}"
id=$(grep -io '^x-request-id: [0-9a-f-]*' <<<"$out" | head -1 | cut -d' ' -f2)
expect "-" "$id" "transform: response header x-request-id"
expect "\"x-request-id: $id\"" "$out" "transform: the handler saw the same request id"
expect "\\\"request_id\\\":\\\"$id\\\"" "$out" "transform: {uuid} in the body is the same id"

expect '"x-forwarded-user: anonymous"' "$($c "$addr/api/status")" "transform: header add only if absent (after rename)"
out=$($c "$addr/other?q=blue" -H 'x-debug: 1')
expect '"uri": "/other?q=blue"' "$out" "transform: outside /api the URI is untouched"
expect '"x-debug: 1"' "$out" "transform: outside /api the headers are untouched"
expect '"body": "name=Ada"' "$($c "$addr/api/users/42" -H 'content-type: text/plain' -d 'name=Ada')" "transform: a non-JSON body streams through"
expect "400" "$($c -o /dev/null -w '%{http_code}' "$addr/api/users/42" -H "$json" -d '{nope')" "transform: invalid JSON is a 400"
