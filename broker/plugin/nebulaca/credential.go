package nebulaca

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// Credential is the plugin's JSON answer. Each field holds the bytes of a
// nebula PEM file: node_crt the node certificate, node_key the node's
// private key (GET only), ca_crt the CA bundle to trust, one certificate
// or, during a rotation, two.
//
// The fields are JSON arrays of byte values, not strings, because that is
// how Trustee's plugin answers (it serializes Rust Vec<u8> with serde), and
// so how its clients decode. With jq: `jq -r '.node_crt | implode'`.
type Credential struct {
	NodeCrt Bytes `json:"node_crt,omitempty"`
	NodeKey Bytes `json:"node_key,omitempty"`
	CACrt   Bytes `json:"ca_crt"`
}

// AppendJSON appends c's JSON encoding to dst: the same document as
// json.Marshal(c), written without reflection.
func (c *Credential) AppendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	if len(c.NodeCrt) > 0 {
		dst = append(dst, `"node_crt":`...)
		dst = c.NodeCrt.appendJSON(dst)
		dst = append(dst, ',')
	}
	if len(c.NodeKey) > 0 {
		dst = append(dst, `"node_key":`...)
		dst = c.NodeKey.appendJSON(dst)
		dst = append(dst, ',')
	}
	dst = append(dst, `"ca_crt":`...)
	dst = c.CACrt.appendJSON(dst)
	return append(dst, '}')
}

// Bytes is a byte string that JSON carries as an array of numbers from 0
// to 255, the way serde writes a Rust Vec<u8>.
type Bytes []byte

// MarshalJSON implements json.Marshaler.
func (b Bytes) MarshalJSON() ([]byte, error) {
	return b.appendJSON(make([]byte, 0, 4*len(b)+2)), nil
}

func (b Bytes) appendJSON(dst []byte) []byte {
	if b == nil {
		return append(dst, "[]"...)
	}
	dst = append(dst, '[')
	for i, c := range b {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendUint(dst, uint64(c), 10)
	}
	return append(dst, ']')
}

// UnmarshalJSON implements json.Unmarshaler: it accepts an array of
// integers from 0 to 255, or null.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	var v []uint16
	if err := json.Unmarshal(data, &v); err != nil {
		return fmt.Errorf("nebulaca: want an array of byte values: %w", err)
	}
	if v == nil {
		*b = nil
		return nil
	}
	out := make([]byte, len(v))
	for i, x := range v {
		if x > 255 {
			return fmt.Errorf("nebulaca: byte array item %d is %d: want 0 to 255", i, x)
		}
		out[i] = byte(x)
	}
	*b = out
	return nil
}
