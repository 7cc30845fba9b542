# setup=attest: attest with Trustee's sample TEE, as README.md shows, and
# leave the attestation token in TOKEN and the session cookie in ./jar.
NONCE=$(curl -sf -c jar -X POST http://127.0.0.1:8080/kbs/v0/auth -H 'Content-Type: application/json' \
  -d '{"version":"0.4.0","tee":"sample","extra-params":""}' | sed 's/.*"nonce":"\([^"]*\)".*/\1/')
PUBKEY='{"alg":"ES256","crv":"P-256","kty":"EC","x":"ugcU8YfvD3aaGjsFicf9xRSLK5I2wXsyXtNLByBj1QE","y":"WWRAoimiqnt7mapLHDYG8twJp3Sp51TmyuzqNsSfr9Q"}'
RD=$(printf '{"additional-evidence":"","nonce":"%s","tee-pubkey":%s}' "$NONCE" "$PUBKEY" \
  | openssl dgst -sha384 -binary | base64 -w0)
TOKEN=$(curl -sf -b jar -X POST http://127.0.0.1:8080/kbs/v0/attest -H 'Content-Type: application/json' \
  -d "{\"runtime-data\":{\"nonce\":\"$NONCE\",\"tee-pubkey\":$PUBKEY},\"tee-evidence\":{\"primary_evidence\":{\"svn\":\"1\",\"report_data\":\"$RD\"},\"additional_evidence\":\"\"}}" \
  | sed 's/.*"token":"\([^"]*\)".*/\1/')
export TOKEN
