package svid_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trustgate/trustgate/broker/plugin"
	"github.com/trustgate/trustgate/broker/plugin/svid"
)

func perSecond(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkX509SVID times X.509-SVID issuance through Handle (CSR parse
// and signature check, entry lookup in SQLite, P-256 signing, JSON), beside
// its floor: x509.CreateCertificate alone with the same keys.
func BenchmarkX509SVID(b *testing.B) {
	f := newFixture(b, time.Now(), svid.DefaultConfig())
	_, der := newCSR(b, workloadID)
	b.Run("svid", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := f.p.Handle(context.Background(), &plugin.Request{Method: http.MethodPost, Path: []string{"x509"}, Body: der, Caller: agent()}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		perSecond(b)
	})
	b.Run("floor-CreateCertificate", func(b *testing.B) {
		caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		ca := &x509.Certificate{SerialNumber: big.NewInt(1), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		caDER, _ := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
		caCert, _ := x509.ParseCertificate(caDER)
		u, _ := url.Parse(workloadID)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
					NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
				if _, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &leafKey.PublicKey, caKey); err != nil {
					b.Error(err)
					return
				}
			}
		})
		perSecond(b)
	})
}

// BenchmarkJWTSVID times JWT-SVID minting through Handle (JSON parse,
// entry lookup, ES256), beside its floor: go-jose signing the same claims.
func BenchmarkJWTSVID(b *testing.B) {
	f := newFixture(b, time.Now(), svid.DefaultConfig())
	body := []byte(`{"spiffe_id":"` + workloadID + `","audience":["https://api.example.org"]}`)
	b.Run("svid", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := f.p.Handle(context.Background(), &plugin.Request{Method: http.MethodPost, Path: []string{"jwt"}, Body: body, Caller: agent()}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		perSecond(b)
	})
	b.Run("floor-go-jose", func(b *testing.B) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k"}}, (&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				now := time.Now()
				c := jwt.Claims{Subject: workloadID, Audience: jwt.Audience{"https://api.example.org"}, IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Minute))}
				if _, err := jwt.Signed(signer).Claims(c).Serialize(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		perSecond(b)
	})
}
