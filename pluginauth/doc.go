// Package pluginauth lets a plugin prove a public key to a runtime-side
// server before any other protocol runs on the connection. Keys are the
// identity, as in WireGuard or SSH authorized_keys: the server maps each
// X25519 public key to a role, which fixes the plugin names and indices the
// key may claim, tags, and an opaque capability set handed back to the
// plugin. The NRI gateway is built on it, and NRI plugin authors import it.
//
// The handshake keeps the algorithm name and semantics of containerd/nri
// PR #183 ("ecdh+chacha+sha256": the runtime seals a random challenge under
// ECDH with a fresh ephemeral key, the plugin answers with SHA-256 of it),
// and adds what that design lacks: an HKDF-SHA256 key schedule, the whole
// transcript (version, algorithm, both keys, name, index, a plugin nonce)
// bound in as associated data, explicit versioning, a hard frame limit,
// deadlines, and optional mutual authentication of a pinned server key.
//
// Messages (each a frame: 2-byte big-endian length, at most MaxFrameSize):
//
//	plugin -> server  hello      version, algorithm, public key, nonce, name, index
//	server -> plugin  challenge  ephemeral key E, Seal(k_s2p, 0, c, TH2)
//	plugin -> server  response   Seal(k_p2s, 0, SHA-256(c), TH3)
//	server -> plugin  accept     Seal(k_s2p, 1, {role, tags, capabilities}, TH4)
//	                  or reject  code, reason (at any step)
//
// where k_s2p || k_p2s = HKDF-SHA256(X25519(e, P) [|| X25519(s, P)], salt
// TH2), TH2 = SHA-256(label || hello || E [|| S]) and each later TH chains
// the previous message. A plugin without a key sends the explicit algorithm
// "none" and gets the "default" role only when authentication is not
// required. The full specification, with test vectors, is
// docs/pluginauth-protocol.md; the vectors are in testdata/vectors.json.
//
// Server side: NewServer(cfg) then Listen(inner) gives a net.Listener whose
// Accept returns only authenticated *Conn values; IdentityOf reads their
// Identity, and Identity.MayRegister checks NRI registrations. Plugin side:
// Dial(ctx, socketPath, key, name, index) returns a *PluginConn ready for
// stub.WithConnection of containerd/nri.
//
// What it does not do: the handshake authenticates the holder of a key when
// the connection starts; it does not encrypt or authenticate the traffic
// after it (NRI runs on a local unix socket). A process that the plugin is
// tricked into dialing could relay the handshake to the real server; protect
// the socket path with file permissions, and pin the server key (mutual
// mode) when that matters.
package pluginauth
