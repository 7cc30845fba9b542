package auth_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/client/auth"
)

// TestTokenErrorsDoNotEchoTheBody makes the token endpoint fail in several
// ways with a marker in the body (as a reflected credential or an internal
// detail would be) and checks that the error says what failed without it.
func TestTokenErrorsDoNotEchoTheBody(t *testing.T) {
	const marker = "s3cr3t-marker"
	for _, c := range []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"refused", http.StatusUnauthorized, `{"errors":[{"message":"bad password ` + marker + `"}]}`, "401"},
		{"server error", http.StatusInternalServerError, marker + " stack trace", "500"},
		{"not JSON", http.StatusOK, marker, "invalid token response"},
		{"bad issued_at", http.StatusOK, `{"token":"t","issued_at":"` + marker + `"}`, "issued_at"},
		{"bad token", http.StatusOK, `{"token":"` + marker + ` with space"}`, "token"},
		{"wrong type", http.StatusOK, `{"token":"t","expires_in":"` + marker + `"}`, "invalid token response"},
	} {
		var srv *httptest.Server
		srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				if c.status != http.StatusOK {
					// A reason phrase of the server's choosing.
					hj, _ := w.(http.Hijacker)
					conn, buf, _ := hj.Hijack()
					defer conn.Close()
					fmt.Fprintf(buf, "HTTP/1.1 %d Refused %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", c.status, marker, len(c.body), c.body)
					_ = buf.Flush()
					return
				}
				fmt.Fprint(w, c.body)
				return
			}
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s",scope="repository:a:pull"`, srv.URL+"/token"))
			w.WriteHeader(http.StatusUnauthorized)
		}))
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/a/manifests/v1", nil)
		resp, err := auth.New().RoundTrip(req)
		srv.Close()
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: no error", c.name)
		}
		if strings.Contains(err.Error(), marker) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q: want %q in it and nothing of the body", c.name, err, c.want)
		}
	}
}
