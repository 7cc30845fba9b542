// Package pb is the generated gRPC code of the external plugin service,
// kbs.plugin.v1.KbsPlugin (plugin.proto), wire-compatible with Trustee's.
// It is committed; CI does not regenerate it. To regenerate, install protoc
// (Debian protobuf-compiler), protoc-gen-go and protoc-gen-go-grpc, then run
// go generate.
package pb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative plugin.proto
