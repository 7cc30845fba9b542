package auth

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	orasauth "oras.land/oras-go/v2/registry/remote/auth"
)

func TestParseChallenges(t *testing.T) {
	cases := []struct {
		in   []string
		want []Challenge
	}{
		{[]string{`Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"`},
			[]Challenge{{Scheme: "bearer", Params: map[string]string{"realm": "https://auth.example.com/token", "service": "registry.example.com", "scope": "repository:a/b:pull,push"}}}},
		{[]string{`BEARER Realm = "x" , Scope=token`},
			[]Challenge{{Scheme: "bearer", Params: map[string]string{"realm": "x", "scope": "token"}}}},
		{[]string{`Basic realm="a, \"quoted\" \\ realm", Bearer realm="r",error="insufficient_scope"`},
			[]Challenge{
				{Scheme: "basic", Params: map[string]string{"realm": `a, "quoted" \ realm`}},
				{Scheme: "bearer", Params: map[string]string{"realm": "r", "error": "insufficient_scope"}}}},
		{[]string{`Newauth`, `Other abc123==, Basic realm=x`},
			[]Challenge{{Scheme: "newauth", Params: map[string]string{}}, {Scheme: "other", Token68: "abc123==", Params: map[string]string{}},
				{Scheme: "basic", Params: map[string]string{"realm": "x"}}}},
		{[]string{`, ,Bearer realm="r",,`}, []Challenge{{Scheme: "bearer", Params: map[string]string{"realm": "r"}}}},
	}
	for _, c := range cases {
		got, err := ParseChallenges(c.in...)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", c.in, got, c.want)
		}
	}
	for _, bad := range []string{`Bearer realm="unterminated`, `Bearer a=b, c=`, `Bearer realm="a" service="b"`, `Bearer a=1, a=2`,
		`=x`, "Bearer realm=\"a\x01\"", `Bearer foo bar`, `Bearer realm="a\`} {
		if _, err := ParseChallenges(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestParseScope(t *testing.T) {
	good := map[string]string{
		"repository:samalba/my-app:pull,push":            "repository:samalba/my-app:pull,push",
		"repository:localhost:5000/foo/bar:push,pull":    "repository:localhost:5000/foo/bar:pull,push",
		"repository(plugin):sam/my-plugin:pull":          "repository(plugin):sam/my-plugin:pull",
		"registry:catalog:*":                             "registry:catalog:*",
		"repository:ab/c.d-e__f:pull,pull,delete":        "repository:ab/c.d-e__f:delete,pull",
		"repository:reg.example.com:443/x/y:pull,*":      "repository:reg.example.com:443/x/y:*",
		"repository:registry-1.docker.io/library/a:pull": "repository:registry-1.docker.io/library/a:pull",
	}
	for in, want := range good {
		s, err := ParseScope(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if s.String() != want {
			t.Errorf("%q: got %q want %q", in, s, want)
		}
	}
	for _, bad := range []string{"", "repository", "repository:foo", "repository:Foo:pull", "repository:foo:", "repository:foo:Pull",
		"Repository:foo:pull", "repository(:foo:pull", "repository:foo//bar:pull", "repository:-foo:pull", "repository:host:x/foo:pull",
		"repository:foo bar:pull"} {
		if _, err := ParseScope(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestCleanScopesMatchesOras(t *testing.T) {
	inputs := [][]string{
		nil,
		{"repository:a:pull"},
		{"repository:a:push,pull,pull"},
		{"repository:a:pull", "repository:a:push", "repository:b:pull"},
		{"repository:a:pull", "repository:a:*", "registry:catalog:*"},
		{"odd", "repository:a:", "repository:localhost:5000/a:pull", "repository:localhost:5000/a:push"},
		{"x:y", "x:y", "a:b:,c"},
		{"a:b:c,c"},
	}
	for _, in := range inputs {
		got, want := CleanScopes(slices.Clone(in)), orasauth.CleanScopes(slices.Clone(in))
		if !slices.Equal(got, want) {
			t.Errorf("%q: got %q, oras-go %q", in, got, want)
		}
	}
}

func TestCovers(t *testing.T) {
	p := func(s string) []Scope {
		sc, err := ParseScopes(s)
		if err != nil {
			t.Fatal(err)
		}
		return sc
	}
	if !Covers(p("repository:a:pull,push"), p("repository:a:pull")) {
		t.Error("pull,push should cover pull")
	}
	if Covers(p("repository:a:pull"), p("repository:a:pull,push")) {
		t.Error("pull must not cover push")
	}
	if Covers(p("repository:a:pull"), p("repository:b:pull")) {
		t.Error("a must not cover b")
	}
	if !Covers(p("repository:a:*"), p("repository:a:delete")) {
		t.Error("* covers all")
	}
	if Covers(p("repository(plugin):a:pull"), p("repository:a:pull")) {
		t.Error("class must match")
	}
}

func TestDecodeTokenResponse(t *testing.T) {
	tr, err := DecodeTokenResponse([]byte(`{"token":"abc.def","access_token":"abc.def","expires_in":300,"issued_at":"2016-01-02T15:04:05.999Z"}`))
	if err != nil || tr.Token != "abc.def" || tr.ExpiresIn != 300*time.Second || tr.IssuedAt.IsZero() {
		t.Fatalf("%+v %v", tr, err)
	}
	tr, err = DecodeTokenResponse([]byte(`{"access_token":"x"}`))
	if err != nil || tr.Token != "x" || tr.ExpiresIn != DefaultExpiresIn {
		t.Fatalf("%+v %v", tr, err)
	}
	now := time.Now()
	if got := (TokenResponse{ExpiresIn: time.Minute, IssuedAt: now.Add(-50 * time.Second)}).Expiry(now); got.Sub(now) > 11*time.Second {
		t.Errorf("issued_at not honoured: expires in %v", got.Sub(now))
	}
	if got := (TokenResponse{ExpiresIn: time.Minute, IssuedAt: now.Add(time.Hour)}).Expiry(now); got != now.Add(time.Minute) {
		t.Errorf("server clock ahead extended lifetime to %v", got.Sub(now))
	}
	for _, bad := range []string{``, `{}`, `{"token":""}`, `{"token":"a b"}`, "{\"token\":\"a\\r\\nX: y\"}", `{"token":"a","expires_in":-1}`,
		`{"token":"a","issued_at":"yesterday"}`, `{"token":5}`, `[]`} {
		if _, err := DecodeTokenResponse([]byte(bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{`Bearer realm="https://a/token",service="s",scope="repository:a:pull"`, `Basic realm="x", Bearer abc==`,
		`Bearer realm="a\"b",error=insufficient_scope`, `, ,`, `Negotiate`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cs, err := ParseChallenges(s)
		if err != nil {
			return
		}
		for _, c := range cs {
			if c.Scheme == "" || c.Scheme != strings.ToLower(c.Scheme) {
				t.Fatalf("bad scheme %q from %q", c.Scheme, s)
			}
		}
	})
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"repository:localhost:5000/foo:pull,push", "repository(plugin):a:pull", "registry:catalog:*", "a:b", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := ParseScope(s)
		if err == nil {
			again, err := ParseScope(sc.String())
			if err != nil || again.String() != sc.String() {
				t.Fatalf("%q -> %q does not round-trip: %v", s, sc, err)
			}
		}
		parts := strings.Fields(s)
		if got, want := CleanScopes(slices.Clone(parts)), orasauth.CleanScopes(slices.Clone(parts)); !slices.Equal(got, want) {
			t.Fatalf("%q: CleanScopes %q, oras-go %q", parts, got, want)
		}
	})
}

func FuzzDecodeTokenResponse(f *testing.F) {
	for _, s := range []string{`{"token":"a","expires_in":60,"issued_at":"2020-01-01T00:00:00Z"}`, `{"access_token":"b","refresh_token":"c"}`, `{}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTokenResponse(b)
		if err != nil {
			return
		}
		if !isHeaderToken(tr.Token) || tr.ExpiresIn <= 0 {
			t.Fatalf("accepted unusable response %+v", tr)
		}
	})
}
