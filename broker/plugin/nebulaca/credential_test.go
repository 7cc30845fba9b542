package nebulaca

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
)

// TestAppendJSONMatchesEncodingJSON: the reflection-free encoder writes
// exactly what encoding/json writes for the same value, and a decoder that
// expects arrays of numbers (as serde does for Vec<u8>) reads it back.
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	randBytes := func(n int) Bytes {
		if n < 0 {
			return nil
		}
		b := make(Bytes, n)
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		return b
	}
	for i := range 200 {
		c := Credential{NodeCrt: randBytes(r.IntN(300) - 20), NodeKey: randBytes(r.IntN(100) - 50), CACrt: randBytes(r.IntN(600) - 10)}
		want, err := json.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.AppendJSON([]byte("prefix")); !bytes.Equal(got[6:], want) || string(got[:6]) != "prefix" {
			t.Fatalf("case %d: AppendJSON\n%s\nencoding/json\n%s", i, got, want)
		}
		var serde struct {
			NodeCrt []int `json:"node_crt"`
			NodeKey []int `json:"node_key"`
			CACrt   []int `json:"ca_crt"`
		}
		if err := json.Unmarshal(want, &serde); err != nil {
			t.Fatalf("case %d: not arrays of numbers: %v", i, err)
		}
		for _, pair := range []struct {
			ints []int
			b    Bytes
		}{{serde.NodeCrt, c.NodeCrt}, {serde.NodeKey, c.NodeKey}, {serde.CACrt, c.CACrt}} {
			if len(pair.ints) != len(pair.b) {
				t.Fatalf("case %d: %d numbers for %d bytes", i, len(pair.ints), len(pair.b))
			}
			for j, v := range pair.ints {
				if v != int(pair.b[j]) {
					t.Fatalf("case %d: item %d is %d, want %d", i, j, v, pair.b[j])
				}
			}
		}
		var back Credential
		if err := json.Unmarshal(want, &back); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.NodeCrt, c.NodeCrt) || !bytes.Equal(back.NodeKey, c.NodeKey) || !bytes.Equal(back.CACrt, c.CACrt) {
			t.Fatalf("case %d: round trip differs", i)
		}
	}
}

func TestBytesRejects(t *testing.T) {
	for _, in := range []string{`"LS0t"`, `[256]`, `[-1]`, `[1.5]`, `[1e2]`, `{}`, `[1,"2"]`, `true`} {
		var b Bytes
		if err := json.Unmarshal([]byte(in), &b); err == nil {
			t.Errorf("%s decoded to %v", in, b)
		}
	}
	var b Bytes
	if err := json.Unmarshal([]byte(` [ 0 , 255 ] `), &b); err != nil || !bytes.Equal(b, []byte{0, 255}) {
		t.Fatalf("%v %v", b, err)
	}
}
