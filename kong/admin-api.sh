#!/usr/bin/env bash
# The Admin API equivalent of kong/kong.yml (Kong 3.5-3.9 with a database, or
# any mode for the read-only checks): a service, a route, and a filter chain
# running the aws_vault filter on that route.
#
#   KONG_ADMIN_URL=http://localhost:8001 BACKEND_URL=http://10.0.0.5:8080 kong/admin-api.sh
#
# Kong validates the filter's "config" object against aws_vault.meta.json's
# config_schema (a bad config is answered 400 here); the filter's own parser runs
# when the chain is built, and logs "invalid configuration: <field>: <why>" in
# Kong's error log if it disagrees (e.g. an unknown vault prefix in a reference).
# The JSON bodies below are checked by tests/meta_schema.rs.
set -euo pipefail

ADMIN="${KONG_ADMIN_URL:-http://localhost:8001}"

post() { # post PATH: JSON body from stdin; fails on a non-2xx answer
  curl -sS --fail-with-body -X POST "$ADMIN$1" \
    -H 'Content-Type: application/json' --data-binary @-
  echo
}

# 0. Is the filter loaded, with its meta.json? Answers the config_schema (404 if
#    aws_vault.wasm is not in wasm_filters_path; a bare {"type":["string","null"]}
#    if aws_vault.meta.json is not beside it).
curl -sS --fail-with-body "$ADMIN/schemas/filters/aws_vault" >/dev/null

# 1. The service: YOUR backend on a private address (BACKEND_URL). Never a public
#    echo service (httpbin and the like): it would show the injected secrets to
#    anyone who calls the route. To see the headers, run an echo of your own on
#    loopback and point BACKEND_URL at it.
post /services <<JSON
{ "name": "backend", "url": "${BACKEND_URL:-http://127.0.0.1:9000}" }
JSON

# 2. A route to it.
post /services/backend/routes <<'JSON'
{ "name": "backend-route", "paths": ["/api"], "strip_path": false }
JSON

# 3. The filter chain on the route. "config" is a JSON object (not a string):
#    with aws_vault.meta.json present, Kong validates it and passes it to the
#    filter JSON-encoded. No "upstream": for real AWS the filter calls
#    secretsmanager.<region>.amazonaws.com:443 over TLS (":scheme: https").
post /routes/backend-route/filter-chains <<'JSON'
{
  "name": "aws-vault-backend",
  "filters": [
    {
      "name": "aws_vault",
      "enabled": true,
      "config": {
        "aws": {
          "region": "us-east-1",
          "ttl": 300,
          "neg_ttl": 30,
          "resurrect_ttl": 3600,
          "timeout_ms": 3000
        },
        "vaults": [
          {
            "name": "aws",
            "prefix": "aws-eu",
            "description": "Secrets kept in the EU region",
            "config": {
              "region": "eu-central-1",
              "ttl": 60
            }
          }
        ],
        "request_headers": {
          "authorization": "Bearer {vault://aws/prod/payments/api/token}",
          "x-partner-key": "{vault://aws-eu/partner-gateway/key}"
        }
      }
    }
  ]
}
JSON

# 4. Try it: the backend receives the injected headers (503 if a secret is unavailable).
#    curl -i http://localhost:8000/api
