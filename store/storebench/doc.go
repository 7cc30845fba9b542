// Package storebench holds benchmarks that run the same store traffic on
// every store implementation in one run (SQLite in a temporary file;
// PostgreSQL on the server TRUSTGATE_TEST_POSTGRES names), so that their
// rates compare on one machine at one moment:
//
//	go test -run '^$' -bench . ./store/storebench/
//
// It has no code of its own.
package storebench
