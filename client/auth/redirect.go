package auth

import (
	"net/http"
	"net/url"
)

// maxChain bounds how far back a redirect chain is followed; net/http stops
// after 10 redirects.
const maxChain = 64

// chainLeftOrigin reports whether the redirect chain that led to req has
// been outside the origin (scheme, host and port) of its first request at
// any hop, req's own included. net/http copies the first request's
// Authorization to every hop on the same host name, whatever the port or
// scheme, so each hop is compared with the first request, never with the
// one before it. A chain whose earlier hops cannot be traced counts as
// having left.
func chainLeftOrigin(req *http.Request) bool {
	hops := []*url.URL{req.URL}
	for r := req; r.Response != nil; r = r.Response.Request {
		if r.Response.Request == nil || r.Response.Request.URL == nil || len(hops) > maxChain {
			return true
		}
		hops = append(hops, r.Response.Request.URL)
	}
	return leftOrigin(hops[len(hops)-1], hops[:len(hops)-1])
}

// leftOrigin reports whether any of hops is outside first's origin.
func leftOrigin(first *url.URL, hops []*url.URL) bool {
	for _, u := range hops {
		if !sameOrigin(u, first) {
			return true
		}
	}
	return false
}
