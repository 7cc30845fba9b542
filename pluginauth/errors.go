package pluginauth

import (
	"errors"
	"fmt"
)

// Code says why a handshake failed. The server sends it to the plugin in a
// reject message, so both sides see the same reason.
type Code uint8

// Reject codes. Their numeric values are part of the wire protocol.
const (
	// CodeUnsupportedVersion: the hello names a protocol version the server
	// does not speak.
	CodeUnsupportedVersion Code = 1
	// CodeUnknownAlgorithm: the hello names an algorithm the server does not
	// know.
	CodeUnknownAlgorithm Code = 2
	// CodeMalformed: a message could not be decoded (bad framing, oversized
	// or truncated frame, bad field).
	CodeMalformed Code = 3
	// CodeAuthenticationRequired: the plugin sent no key, and the server
	// requires one.
	CodeAuthenticationRequired Code = 4
	// CodeUnknownKey: the plugin's key is in no role.
	CodeUnknownKey Code = 5
	// CodeNameNotAllowed: the key's role does not let it claim this plugin
	// name or index.
	CodeNameNotAllowed Code = 6
	// CodeProofFailed: the plugin did not prove that it holds the private key.
	CodeProofFailed Code = 7
	// CodeMutualUnavailable: the plugin asked for mutual authentication and
	// the server has no static key.
	CodeMutualUnavailable Code = 8
	// CodeServerProofFailed: in mutual mode, the server did not prove the key
	// the plugin pinned. The plugin detects this; it is never sent.
	CodeServerProofFailed Code = 9
	// CodeInternal: the server failed for a reason of its own.
	CodeInternal Code = 10
)

var codeNames = map[Code]string{
	CodeUnsupportedVersion:     "unsupported version",
	CodeUnknownAlgorithm:       "unknown algorithm",
	CodeMalformed:              "malformed message",
	CodeAuthenticationRequired: "authentication required",
	CodeUnknownKey:             "unknown key",
	CodeNameNotAllowed:         "name not allowed",
	CodeProofFailed:            "proof of possession failed",
	CodeMutualUnavailable:      "mutual authentication unavailable",
	CodeServerProofFailed:      "server failed to prove its key",
	CodeInternal:               "internal error",
}

// String names the code.
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code %d", uint8(c))
}

// Error is a failed handshake. errors.Is matches it against the Err*
// sentinels by Code, on either side of the connection.
type Error struct {
	// Code classifies the failure.
	Code Code
	// Reason explains it for a human.
	Reason string
	// Remote is true when the peer reported the failure (a reject message
	// received by the plugin).
	Remote bool
}

// Error implements error.
func (e *Error) Error() string {
	prefix := "pluginauth: "
	if e.Remote {
		prefix = "pluginauth: server rejected the handshake: "
	}
	if e.Reason == "" {
		return prefix + e.Code.String()
	}
	return prefix + e.Code.String() + ": " + e.Reason
}

// Is reports whether target is an *Error with the same Code.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	// ErrUnsupportedVersion matches CodeUnsupportedVersion.
	ErrUnsupportedVersion = &Error{Code: CodeUnsupportedVersion}
	// ErrUnknownAlgorithm matches CodeUnknownAlgorithm.
	ErrUnknownAlgorithm = &Error{Code: CodeUnknownAlgorithm}
	// ErrMalformed matches CodeMalformed.
	ErrMalformed = &Error{Code: CodeMalformed}
	// ErrAuthenticationRequired matches CodeAuthenticationRequired.
	ErrAuthenticationRequired = &Error{Code: CodeAuthenticationRequired}
	// ErrUnknownKey matches CodeUnknownKey.
	ErrUnknownKey = &Error{Code: CodeUnknownKey}
	// ErrNameNotAllowed matches CodeNameNotAllowed.
	ErrNameNotAllowed = &Error{Code: CodeNameNotAllowed}
	// ErrProofFailed matches CodeProofFailed.
	ErrProofFailed = &Error{Code: CodeProofFailed}
	// ErrMutualUnavailable matches CodeMutualUnavailable.
	ErrMutualUnavailable = &Error{Code: CodeMutualUnavailable}
	// ErrServerProofFailed matches CodeServerProofFailed.
	ErrServerProofFailed = &Error{Code: CodeServerProofFailed}
	// ErrInternal matches CodeInternal.
	ErrInternal = &Error{Code: CodeInternal}
)

func errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Reason: fmt.Sprintf(format, args...)}
}
