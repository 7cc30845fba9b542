package reportdata_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/trustgate/trustgate/attest/reportdata"
	"github.com/trustgate/trustgate/broker/rcartest"
)

// TestAgreesWithIndependentClient checks Compute against rcartest, a
// client written from Trustee's protocol document with its own JCS
// encoder, for every hash and a JWK whose members are out of JCS order.
func TestAgreesWithIndependentClient(t *testing.T) {
	pub := map[string]string{"y": "WWRAoimiqnt7mapLHDYG8twJp3Sp51TmyuzqNsSfr9Q", "kty": "EC", "crv": "P-256", "x": "ugcU8YfvD3aaGjsFicf9xRSLK5I2wXsyXtNLByBj1QE", "alg": "ECDH-ES+A256KW"}
	raw := []byte(`{"y":"WWRAoimiqnt7mapLHDYG8twJp3Sp51TmyuzqNsSfr9Q","kty":"EC", "crv":"P-256","x":"ugcU8YfvD3aaGjsFicf9xRSLK5I2wXsyXtNLByBj1QE","alg":"ECDH-ES+A256KW"}`)
	for _, alg := range []string{reportdata.SHA256, reportdata.SHA384, reportdata.SHA512} {
		want, err := rcartest.ReportData(alg, pub, "bm9uY2U=", "")
		if err != nil {
			t.Fatal(err)
		}
		got, err := reportdata.Compute(alg, json.RawMessage(raw), "bm9uY2U=", "")
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: got %x (%v), want %x", alg, got, err, want)
		}
	}
	if _, err := reportdata.Compute("md5", raw, "n", ""); err == nil {
		t.Fatal("md5 accepted")
	}
}
