// Package sample is the "sample" attestor: Trustee's stand-in TEE with no
// hardware, for tests and demos.
//
// Its evidence is Trustee's SampleTeeEvidence (deps/verifier/src/sample in
// confidential-containers/trustee):
//
//	{"svn": "1", "report_data": "<standard base64 of the report data>"}
//
// Nothing signs it, so it proves only that the caller computed report_data
// for this challenge. Never enable it where a real TEE is expected.
package sample

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trustgate/trustgate/attest"
	"github.com/trustgate/trustgate/store"
)

// Name is the attestor's name, the RCAR request's "tee".
const Name = "sample"

// Attestor verifies sample evidence.
type Attestor struct {
	id spiffeid.ID
}

var _ attest.Attestor = (*Attestor)(nil)

// New returns a sample attestor issuing spiffe://<td>/tee/sample.
func New(td spiffeid.TrustDomain) (*Attestor, error) {
	id, err := spiffeid.FromSegments(td, "tee", Name)
	if err != nil {
		return nil, fmt.Errorf("sample attestor: %w", err)
	}
	return &Attestor{id: id}, nil
}

// Name implements attest.Attestor.
func (a *Attestor) Name() string { return Name }

// Evidence is the sample TEE's evidence.
type Evidence struct {
	// SVN is the security version number the caller reports.
	SVN *string `json:"svn"`
	// ReportData is the report data, standard base64.
	ReportData *string `json:"report_data"`
}

// svnPattern bounds what an SVN may be, since it becomes a selector.
var svnPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Attest implements attest.Attestor.
func (a *Attestor) Attest(_ context.Context, ch attest.Challenge, evidence json.RawMessage) (attest.Result, error) {
	var ev Evidence
	dec := json.NewDecoder(bytes.NewReader(evidence))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return attest.Result{}, fmt.Errorf("%w: sample evidence: %v", attest.ErrRejected, err)
	}
	switch {
	case ev.SVN == nil:
		return attest.Result{}, fmt.Errorf("%w: sample evidence: missing \"svn\"", attest.ErrRejected)
	case !svnPattern.MatchString(*ev.SVN):
		return attest.Result{}, fmt.Errorf("%w: sample evidence: svn %.70q: want 1-64 of [A-Za-z0-9._-]", attest.ErrRejected, *ev.SVN)
	case ev.ReportData == nil:
		return attest.Result{}, fmt.Errorf("%w: sample evidence: missing \"report_data\"", attest.ErrRejected)
	case len(ch.ReportData) == 0:
		return attest.Result{}, fmt.Errorf("sample attestor: challenge has no report data")
	}
	rd, err := base64.StdEncoding.DecodeString(*ev.ReportData)
	if err != nil {
		return attest.Result{}, fmt.Errorf("%w: sample evidence: report_data is not standard base64: %v", attest.ErrRejected, err)
	}
	if subtle.ConstantTimeCompare(rd, ch.ReportData) != 1 {
		return attest.Result{}, fmt.Errorf("%w: sample evidence: report_data does not match this challenge", attest.ErrRejected)
	}
	return attest.Result{
		SPIFFEID:  a.id.String(),
		Selectors: []store.Selector{{Type: Name, Value: "svn:" + *ev.SVN}},
		// The claims Trustee's sample verifier reports, so that policies
		// written for it carry over. Only svn and report_data come from
		// the evidence.
		Claims: map[string]any{
			"svn":              *ev.SVN,
			"report_data":      *ev.ReportData,
			"launch_digest":    "abcde",
			"platform_version": map[string]any{"major": 1, "minor": 4},
			"debug":            false,
		},
	}, nil
}
