package broker

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/policy"
)

// verifyClientSVID authenticates a TLS client by its certificate chain: an
// X.509-SVID chained to Options.ClientSVIDs. The handshake has verified it
// already; it is verified again here against the bundle of the moment, at
// the request's time, and the result cached like a token until the leaf
// expires. The caller is its SPIFFE ID, with no TEE claims.
func (s *Server) verifyClientSVID(chain []*x509.Certificate) (*callerEntry, *authFailure) {
	now := s.now()
	h := sha256.New()
	h.Write([]byte("x509-svid\x00"))
	for _, c := range chain {
		h.Write(c.Raw)
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	if e := s.tokens.get(key); e != nil && e.valid(now) {
		return e, nil
	}
	id, _, err := x509svid.Verify(chain, s.opts.ClientSVIDs, x509svid.WithTime(now))
	if err != nil {
		s.log.Warn("client certificate refused", "reason", err.Error())
		return nil, &authFailure{status: http.StatusUnauthorized, typ: ProblemTokenInvalid, detail: "client certificate: " + err.Error(), errCode: "invalid_token"}
	}
	sid := id.String()
	e := &callerEntry{kind: credX509SVID, caller: plugin.Caller{Subject: sid, SPIFFEID: sid},
		claims: policy.Claims{Subject: sid, SPIFFEID: sid}, notBefore: chain[0].NotBefore, expiry: chain[0].NotAfter,
		teeKeyErr: errors.New("an X.509-SVID carries no tee-pubkey")}
	s.tokens.put(key, e, now)
	return e, nil
}
