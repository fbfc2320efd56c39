# Probes examples/auth.rs; sourced by .ci/examples (start, expect, $addr, $log).
c="curl -sS --max-time 5"
start auth --port 0
code() { $c -o /dev/null -w '%{http_code}' "$@"; }
alice="x-api-key: demo-alice-key"
bob="authorization: Bearer demo-bob-key"
admin="x-api-key: demo-admin-key"
token=$(grep -o 'TOKEN=[A-Za-z0-9._-]*' "$log" | head -1 | cut -d= -f2)

expect "sha256:$(printf %s demo-alice-key | sha256sum | cut -d' ' -f1)" "$(cat "$log")" "auth: prints the digest table"
expect "demo-alice-key" "$(cat "$log")" "auth: prints the demo keys"
expect '"id":"alice","tenant":"acme"' "$($c -H "$alice" "$addr/whoami")" "auth: /whoami names the caller (x-api-key)"
expect '"id":"bob"' "$($c -H "$bob" "$addr/whoami")" "auth: /whoami names the caller (bearer key)"
expect "401" "$(code "$addr/whoami")" "auth: no key is a 401"
expect "401" "$(code -H 'x-api-key: wrong' "$addr/whoami")" "auth: an unknown key is a 401"
expect '"reports"' "$($c -H "$alice" "$addr/reports")" "auth: /reports with the scope is a 200"
expect "403" "$(code -H "$bob" "$addr/reports")" "auth: /reports without the scope is a 403"
expect "missing scope: reports:read" "$($c -H "$bob" "$addr/reports")" "auth: the 403 names the missing scope"
expect "eyJ" "$token" "auth: prints a demo JWT"
expect '"id":"carol","tenant":"globex"' "$($c -H "authorization: Bearer $token" "$addr/jwt/whoami")" "auth: /jwt/whoami reads the token's claims"
expect '"reports"' "$($c -H "authorization: Bearer $token" "$addr/jwt/reports")" "auth: /jwt/reports with the scope claim"
expect "401" "$(code -H "authorization: Bearer ${token}x" "$addr/jwt/whoami")" "auth: a tampered JWT is a 401"
expect "401" "$(code -H "$alice" "$addr/jwt/whoami")" "auth: an API key on /jwt is a 401"
expect "403" "$(code -X POST -H "$bob" "$addr/admin/revoke/alice")" "auth: revoking without the admin scope is a 403"
expect "200" "$(code -H "$alice" "$addr/whoami")" "auth: alice's key still works"
expect '"revoked":1' "$($c -X POST -H "$admin" "$addr/admin/revoke/alice")" "auth: admin revokes alice's key"
expect "401" "$(code -H "$alice" "$addr/whoami")" "auth: a revoked key is a 401 at once"
expect "200" "$(code -H "$bob" "$addr/whoami")" "auth: other keys still work"
expect "404" "$(code -X POST -H "$admin" "$addr/admin/revoke/alice")" "auth: revoking an unknown identity is a 404"
unset -f code
