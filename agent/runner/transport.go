package runner

import (
	"io"
	"net/http"
	"sync"
)

// rotatingTransport sends each request through the current generation of
// an http.Transport. A TLS connection keeps the client certificate it was
// opened with, and the broker accepts only the agent's current and previous
// SVID. Closing idle connections at a rotation is not enough: a long poll in
// flight keeps its connection (and, over HTTP/2, every request multiplexed
// on it) presenting the old SVID, which two rotations later is refused for
// good. Rotate starts a new generation, so every later request opens a
// connection with the new SVID; an older generation's connections are
// closed once idle, and are never used again.
type rotatingTransport struct {
	newTransport func() *http.Transport

	mu  sync.Mutex
	cur *http.Transport
}

func newRotatingTransport(newTransport func() *http.Transport) *rotatingTransport {
	return &rotatingTransport{newTransport: newTransport, cur: newTransport()}
}

func (t *rotatingTransport) current() *http.Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cur
}

// RoundTrip implements http.RoundTripper.
func (t *rotatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tr := t.current()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &retireOnClose{ReadCloser: resp.Body, retire: func() {
		if t.current() != tr {
			tr.CloseIdleConnections()
		}
	}}
	return resp, nil
}

// Rotate starts a new generation: call it after the client certificate
// changed.
func (t *rotatingTransport) Rotate() {
	t.mu.Lock()
	old := t.cur
	t.cur = t.newTransport()
	t.mu.Unlock()
	old.CloseIdleConnections()
}

// CloseIdleConnections closes the current generation's idle connections.
func (t *rotatingTransport) CloseIdleConnections() { t.current().CloseIdleConnections() }

// retireOnClose runs retire after the body is closed: a request that was
// in flight at a rotation closes its old connection when it ends.
type retireOnClose struct {
	io.ReadCloser
	retire func()
}

func (r *retireOnClose) Close() error {
	err := r.ReadCloser.Close()
	r.retire()
	return err
}
