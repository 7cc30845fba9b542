// Package auth is a client for the distribution token authentication spec
// (docs/content/spec/auth/{token,oauth,scope}.md in distribution/distribution):
// an [http.RoundTripper] that answers registry Bearer and Basic challenges,
// fetches scoped tokens, and caches them without ever sending a token past
// the scope it was issued for.
//
// # How a request gets its token
//
// Every request belongs to a context: its origin (scheme, host and port) and
// the scope set derived from its path and method, for example
// "repository:library/alpine:pull" for GET /v2/library/alpine/manifests/latest.
// The first 401 in a context tells the transport which realm, service and
// scope the server really wants for that context. A compliant server asks for
// the derived scope; a non-compliant one (a proxy that rewrites paths, or that
// demands "pull,push" for a pull) asks for something else. Either way the
// transport remembers the answer for that context only, and the next request
// in the same context goes out with the right token at once: one HTTP request.
//
// A token is cached under (origin, realm, service, normalized scope set) and is
// attached only to requests on the same origin whose context learned exactly
// that scope set, or, on an origin that has only ever answered with the
// derived scope, to requests whose derived scope the token covers. Tokens are
// refreshed before they expire (expires_in, issued_at), concurrent requests
// that need the same token share one fetch, and an insufficient_scope answer
// causes at most one re-authentication, with the merged scope.
package auth
