package broker

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/trustgate/trustgate/config"
)

func TestTLSConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string // substrings of the error; none: valid
	}{
		{name: "default is ca", doc: ``},
		{name: "cleartext loopback", doc: "listen = \"127.0.0.1:80\"\n[tls]\nmode = \"off\"\n"},
		{name: "cleartext localhost", doc: "listen = \"localhost:80\"\n[tls]\nmode = \"off\"\n"},
		{name: "cleartext ipv6 loopback", doc: "listen = \"[::1]:80\"\n[tls]\nmode = \"off\"\n"},
		{name: "cleartext all interfaces", doc: "listen = \"0.0.0.0:80\"\n[tls]\nmode = \"off\"\n",
			want: []string{`listen = "0.0.0.0:80"`, "insecure_http = true", `tls.mode = "ca"`}},
		{name: "cleartext empty host", doc: "listen = \":80\"\n[tls]\nmode = \"off\"\n", want: []string{"insecure_http = true"}},
		{name: "cleartext public ip", doc: "listen = \"192.0.2.1:80\"\n[tls]\nmode = \"off\"\n", want: []string{"insecure_http = true"}},
		{name: "cleartext host name", doc: "listen = \"broker.example:80\"\n[tls]\nmode = \"off\"\n", want: []string{"insecure_http = true"}},
		{name: "cleartext with insecure_http", doc: "listen = \"0.0.0.0:80\"\ninsecure_http = true\n[tls]\nmode = \"off\"\n"},
		{name: "insecure_http with tls", doc: "insecure_http = true\n", want: []string{`insecure_http = true with tls.mode = "ca"`}},
		{name: "files without files", doc: "[tls]\nmode = \"files\"\n", want: []string{"tls.cert_file and tls.key_file"}},
		{name: "unknown mode", doc: "[tls]\nmode = \"acme\"\n", want: []string{`tls.mode = "acme"`}},
		{name: "short cert ttl", doc: "[tls]\ncert_ttl = \"1s\"\n", want: []string{`tls.cert_ttl = "1s"`}},
		{name: "bad server name", doc: "[tls]\nserver_names = [\"a b\"]\n", want: []string{`"a b" is neither`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			if err := config.Decode([]byte(tc.doc), &c); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want %q, got valid", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestServingNames(t *testing.T) {
	c := DefaultConfig()
	c.Listen = "10.0.0.5:8443"
	c.Issuer = "https://broker.example.org:8443/"
	c.TLS.ServerNames = []string{"alt.example.org", "2001:db8::1", "localhost"}
	dns, ips := c.servingNames()
	if !slices.Equal(dns, []string{"alt.example.org", "localhost", "broker.example.org"}) {
		t.Errorf("dns %v", dns)
	}
	var got []string
	for _, ip := range ips {
		got = append(got, ip.String())
	}
	if !slices.Equal(got, []string{"2001:db8::1", "10.0.0.5", "127.0.0.1", "::1"}) {
		t.Errorf("ips %v", got)
	}
	c.Listen = "0.0.0.0:8443"
	if _, ips := c.servingNames(); slices.ContainsFunc(ips, net.IP.IsUnspecified) {
		t.Errorf("unspecified listen address in the certificate: %v", ips)
	}
}
