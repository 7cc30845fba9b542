package runner

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clientCert makes a self-signed client certificate with serial n.
func clientCert(t *testing.T, n int64) *tls.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(n), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// After a rotation every request presents the new certificate, also while
// a request opened with the old one is in flight (a long poll) and after it
// ended: the broker refuses an SVID two rotations old. Over HTTP/2 and
// HTTP/1.1.
func TestRotatingTransportNeverReusesAnOldCertificate(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		name := map[bool]string{true: "h2", false: "http1.1"}[h2]
		t.Run(name, func(t *testing.T) {
			release := make(chan struct{})
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/poll" {
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					<-release
				}
				_, _ = io.WriteString(w, r.TLS.PeerCertificates[0].SerialNumber.String())
			}))
			srv.EnableHTTP2 = h2
			srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
			srv.StartTLS()
			defer srv.Close()
			var releaseOnce sync.Once
			unblock := func() { releaseOnce.Do(func() { close(release) }) }
			defer unblock() // before srv.Close, which waits for the poll

			var serial atomic.Int64
			serial.Store(1)
			var mu sync.Mutex
			certs := map[int64]*tls.Certificate{}
			conf := &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					mu.Lock()
					defer mu.Unlock()
					n := serial.Load()
					if certs[n] == nil {
						certs[n] = clientCert(t, n)
					}
					return certs[n], nil
				}}
			tr := newRotatingTransport(func() *http.Transport {
				return &http.Transport{TLSClientConfig: conf.Clone(), ForceAttemptHTTP2: h2}
			})
			hc := &http.Client{Transport: tr}
			fetch := func(path string) (string, error) {
				resp, err := hc.Get(srv.URL + path)
				if err != nil {
					return "", err
				}
				defer resp.Body.Close()
				if h2 != (resp.ProtoMajor == 2) {
					return "", fmt.Errorf("protocol %s", resp.Proto)
				}
				b, err := io.ReadAll(resp.Body)
				return string(b), err
			}
			get := func(path string) string {
				s, err := fetch(path)
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			if got := get("/"); got != "1" {
				t.Fatalf("serial %s, want 1", got)
			}
			poll := make(chan string, 1)
			go func() {
				s, err := fetch("/poll")
				if err != nil {
					s = err.Error()
				}
				poll <- s
			}()
			time.Sleep(50 * time.Millisecond) // the poll is in flight
			for n := int64(2); n <= 3; n++ {
				serial.Store(n)
				tr.Rotate()
			}
			if got := get("/"); got != "3" {
				t.Fatalf("during the poll: serial %s, want 3", got)
			}
			unblock()
			if got := <-poll; got != "1" {
				t.Fatalf("the poll presented %s, want 1", got)
			}
			for i := range 5 {
				if got := get("/"); got != "3" {
					t.Fatalf("request %d after the poll: serial %s, want 3", i, got)
				}
			}
		})
	}
}
