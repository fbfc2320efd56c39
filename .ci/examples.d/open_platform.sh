# shellcheck shell=bash
# --- open_platform: lifecycle, catalog, subscriptions, team admin keys and
# a prompt API (examples/open_platform.rs) --- sourced by .ci/examples:
# start, expect, $addr, $log, $pid.
opstate=$(mktemp -u)
start open_platform --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --state "$opstate"
c="curl -sS --max-time 5"
g=$(grep -o 'gateway: http://[0-9.:]*' "$log" | cut -d' ' -f2)
a=$(grep -o 'admin: *http://[0-9.:]*' "$log" | awk '{print $2}')
shop='x-api-key: shop-key'
J='content-type: application/json'
alice='{"consumer": {"kind": "identity", "id": "alice", "tenant": "shop"}}'

out=$($c "$g/catalog" -H "$shop")
expect '"name":"orders"' "$out" "open_platform: the catalog lists orders"
expect '"state":"deprecated"' "$out" "open_platform: ... v1 deprecated"
expect '"name":"summarize"' "$out" "open_platform: ... and the prompt API"
expect '"openapi":"3.1.0"' "$($c "$g/catalog/orders/v2/openapi.json" -H "$shop")" "open_platform: an OpenAPI 3.1 document"
out=$($c -i "$g/v2/orders/7" -H "$shop")
expect '403 Forbidden' "$out" "open_platform: v2 without a subscription is refused"
expect '"code":"subscription_required"' "$out" "open_platform: ... subscription_required"
expect '"status":"pending"' "$($c -X POST "$g/catalog/orders/subscription" -H "$shop")" "open_platform: asked through the catalog: pending"
expect '403' "$($c -o /dev/null -w '%{http_code}' -X POST "$a/subscriptions/orders/approve" -H 'x-api-key: ml-admin-key' -H "$J" -d "$alice")" "open_platform: another team's admin key cannot approve"
expect '403' "$($c -o /dev/null -w '%{http_code}' -X POST "$a/subscriptions/orders/approve" -H 'x-api-key: viewer-key' -H "$J" -d "$alice")" "open_platform: a read-only admin key cannot approve"
expect '"status":"approved"' "$($c -X POST "$a/subscriptions/orders/approve" -H 'x-api-key: orders-admin-key' -H "$J" -d "$alice")" "open_platform: the owners approve"
expect '"served":"/v2/orders/7"' "$($c "$g/v2/orders/7" -H "$shop")" "open_platform: v2 answers the subscriber"
out=$($c -i "$g/v1/orders/7" -H "$shop")
expect 'deprecation: @1780272000' "$out" "open_platform: v1 answers with Deprecation"
expect 'sunset: Fri, 01 Jan 2027 00:00:00 GMT' "$out" "open_platform: ... Sunset"
expect 'rel="successor-version"' "$out" "open_platform: ... and a Link to v2"
expect '403' "$($c -o /dev/null -w '%{http_code}' "$g/v2/orders/7" -H 'x-api-key: bank-key')" "open_platform: bank has no subscription"

expect '"status":"approved"' "$($c -X POST "$g/catalog/summarize/subscription?for=tenant" -H "$shop")" "open_platform: summarize is open: approved at once"
ask='{"variables": {"text": "The quarterly report shows revenue up ten percent and costs flat."}}'
expect '(You summarize texts in one sentence.)' "$($c "$g/v1/prompts/summarize" -H "$shop" -H "$J" -d "$ask")" "open_platform: the prompt API answers with v1's template"
expect '"param":"variables.style"' "$($c "$g/v1/prompts/summarize" -H "$shop" -H "$J" -d '{"variables": {"text": "x", "style": "poem"}}')" "open_platform: a value not in the enum is a 400 naming it"
expect '"v2":100' "$($c -X POST "$a/splits/summarize/promote/v2" -H 'x-api-key: ml-admin-key')" "open_platform: team-ml promotes the new prompt"
expect '(You summarize texts in at most)' "$($c "$g/v1/prompts/summarize" -H "$shop" -H "$J" -d "$ask")" "open_platform: ... which answers now"
expect '"v1":100' "$($c -X POST "$a/splits/summarize/rollback" -H 'x-api-key: ml-admin-key')" "open_platform: ... and rolls it back"

expect '"to":"retired"' "$($c -X POST "$a/apis/orders-v1/stage" -H 'x-api-key: orders-admin-key' -H "$J" -d '{"stage": "retired"}')" "open_platform: the orders team retires v1"
expect '410' "$($c -o /dev/null -w '%{http_code}' "$g/v1/orders/7" -H "$shop")" "open_platform: ... 410 Gone"
expect 'team `team-ml`' "$($c -X POST "$a/apis/summarize/stage" -H 'x-api-key: orders-admin-key' -H "$J" -d '{"stage": "deprecated"}')" "open_platform: another team's API is refused"
expect '"by":"olga"' "$($c "$a/apis/orders-v1" -H 'x-api-key: viewer-key')" "open_platform: the move is logged with who"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

# Restarted over the same state file: v1 still retired, alice still subscribed.
start open_platform --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --state "$opstate"
g=$(grep -o 'gateway: http://[0-9.:]*' "$log" | cut -d' ' -f2)
expect '410' "$($c -o /dev/null -w '%{http_code}' "$g/v1/orders/7" -H "$shop")" "open_platform: after a restart v1 is still retired"
expect '"served":"/v2/orders/7"' "$($c "$g/v2/orders/7" -H "$shop")" "open_platform: ... and alice still subscribed"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
rm -f "$opstate"
