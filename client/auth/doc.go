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
//
// # Where credentials may go
//
// A redirect chain that leaves the origin of its first request (another
// scheme, host or port, https to http included) never carries the caller's
// own Authorization header again, even back to that origin; token requests
// follow the same rule for their credentials. A Bearer realm must be an
// http(s) URL without user info, may not downgrade an https registry to
// http, and, for a registry that is public, may not lead to a private
// address: neither as a literal nor as a name that resolves to one. The
// name check happens when the connection is made: the transport resolves
// the realm's name itself (WithResolver), refuses it if any address is
// private, and connects only to the addresses it checked, so a name that
// changes its answer in between (DNS rebinding) does not pass. A registry
// whose own name resolves only to private addresses may use a private
// realm. Errors from a failed token fetch give its status, never the body.
package auth
