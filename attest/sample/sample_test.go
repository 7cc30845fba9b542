package sample

import (
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
)

func newAttestor(t testing.TB) *Attestor {
	a, err := New(spiffeid.RequireTrustDomainFromString("example.org"))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func challenge() attest.Challenge {
	rd := sha512.Sum384([]byte("runtime data"))
	return attest.Challenge{Nonce: "n", ReportData: rd[:], HashAlgorithm: "sha384"}
}

func TestAccepts(t *testing.T) {
	ch := challenge()
	ev := `{"svn":"1","report_data":"` + base64.StdEncoding.EncodeToString(ch.ReportData) + `"}`
	r, err := newAttestor(t).Attest(context.Background(), ch, json.RawMessage(ev))
	if err != nil {
		t.Fatal(err)
	}
	if r.SPIFFEID != "spiffe://example.org/tee/sample" || len(r.Selectors) != 1 || r.Selectors[0].Value != "svn:1" || r.Claims["svn"] != "1" {
		t.Fatalf("result %+v", r)
	}
}

func TestRejects(t *testing.T) {
	ch := challenge()
	good := base64.StdEncoding.EncodeToString(ch.ReportData)
	other := sha512.Sum384([]byte("other"))
	for name, ev := range map[string]string{
		"null":               `null`,
		"empty":              ``,
		"array":              `[]`,
		"no svn":             `{"report_data":"` + good + `"}`,
		"no report_data":     `{"svn":"1"}`,
		"wrong report_data":  `{"svn":"1","report_data":"` + base64.StdEncoding.EncodeToString(other[:]) + `"}`,
		"short report_data":  `{"svn":"1","report_data":"` + base64.StdEncoding.EncodeToString(ch.ReportData[:47]) + `"}`,
		"url base64":         `{"svn":"1","report_data":"` + base64.RawURLEncoding.EncodeToString(ch.ReportData) + `_"}`,
		"svn with separator": `{"svn":"1:2","report_data":"` + good + `"}`,
		"unknown field":      `{"svn":"1","report_data":"` + good + `","x":1}`,
		"svn not a string":   `{"svn":1,"report_data":"` + good + `"}`,
	} {
		_, err := newAttestor(t).Attest(context.Background(), ch, json.RawMessage(ev))
		if !errors.Is(err, attest.ErrRejected) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzAttest(f *testing.F) {
	ch := challenge()
	f.Add([]byte(`{"svn":"1","report_data":"` + base64.StdEncoding.EncodeToString(ch.ReportData) + `"}`))
	f.Add([]byte(`{"svn":null}`))
	a := newAttestor(f)
	f.Fuzz(func(t *testing.T, ev []byte) {
		r, err := a.Attest(context.Background(), ch, ev)
		if err == nil {
			var v struct {
				ReportData string `json:"report_data"`
			}
			_ = json.Unmarshal(ev, &v)
			if got, _ := base64.StdEncoding.DecodeString(v.ReportData); string(got) != string(ch.ReportData) || r.SPIFFEID == "" {
				t.Fatalf("accepted evidence without the challenge's report data: %s", ev)
			}
		} else if !errors.Is(err, attest.ErrRejected) {
			t.Fatalf("bad evidence is not ErrRejected: %v", err)
		}
	})
}
