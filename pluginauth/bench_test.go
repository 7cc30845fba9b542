package pluginauth

import (
	"context"
	"crypto/ecdh"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/unix"
)

// threadCPU returns the CPU time (user+system) of the calling OS thread.
func threadCPU(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func processCPU(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHandshake runs complete handshakes, one after another, over one
// AF_UNIX socket pair (each handshake leaves the connection clean for the
// next). Each side runs on its own locked OS thread so that its CPU time is
// measured separately.
func BenchmarkHandshake(b *testing.B) {
	for _, mode := range []string{"keyed", "mutual"} {
		b.Run(mode, func(b *testing.B) {
			plugin, serverKey := mustKey(b), mustKey(b)
			cfg := DefaultServerConfig()
			cfg.Roles = []RoleConfig{roleCfg("bench", []string{"*"}, []string{"*"}, plugin)}
			s := newTestServer(b, cfg, WithStaticKey(serverKey))
			var opts []DialOption
			if mode == "mutual" {
				opts = append(opts, WithServerKey(serverKey.Public()))
			}
			sc, cc := socketPair(b)
			ctx := context.Background()

			var wg sync.WaitGroup
			var serverCPU, pluginCPU time.Duration
			start := make(chan struct{})
			wg.Add(2)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				<-start
				t0 := threadCPU(b)
				for range b.N {
					if _, err := s.Handshake(ctx, sc); err != nil {
						b.Error(err)
						return
					}
				}
				serverCPU = threadCPU(b) - t0
			}()
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				<-start
				t0 := threadCPU(b)
				for range b.N {
					if _, err := ClientHandshake(ctx, cc, plugin, "bench", "10", opts...); err != nil {
						b.Error(err)
						return
					}
				}
				pluginCPU = threadCPU(b) - t0
			}()
			p0 := processCPU(b)
			b.ResetTimer()
			close(start)
			wg.Wait()
			b.StopTimer()
			procCPU := processCPU(b) - p0
			n := float64(b.N)
			b.ReportMetric(n/b.Elapsed().Seconds(), "handshakes/s")
			b.ReportMetric(float64(serverCPU.Microseconds())/n, "server-cpu-µs/op")
			b.ReportMetric(float64(pluginCPU.Microseconds())/n, "plugin-cpu-µs/op")
			b.ReportMetric(float64(procCPU.Microseconds())/n, "process-cpu-µs/op")
			if serverCPU > 0 && pluginCPU > 0 {
				b.ReportMetric(n/serverCPU.Seconds(), "server-handshakes/core-s")
				b.ReportMetric(n/pluginCPU.Seconds(), "plugin-handshakes/core-s")
			}
		})
	}
}

// BenchmarkX25519 is one X25519 key agreement, the dominant cost of a side.
func BenchmarkX25519(b *testing.B) {
	a, c := mustKey(b), mustKey(b)
	pub, err := ecdh.X25519().NewPublicKey(c.Public().Bytes())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := a.k.ECDH(pub); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSeal is one ChaCha20-Poly1305 seal of a 32-byte challenge with a
// 32-byte transcript hash as associated data.
func BenchmarkSeal(b *testing.B) {
	aead, err := chacha20poly1305.New(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	var msg, ad [32]byte
	out := make([]byte, 0, 48)
	for b.Loop() {
		out = aead.Seal(out[:0], nonce(0), msg[:], ad[:])
	}
}

// BenchmarkTwoX25519AndSeal is the physical floor of one side: two X25519
// operations and one AEAD seal.
func BenchmarkTwoX25519AndSeal(b *testing.B) {
	a, c := mustKey(b), mustKey(b)
	pub, err := ecdh.X25519().NewPublicKey(c.Public().Bytes())
	if err != nil {
		b.Fatal(err)
	}
	aead, err := chacha20poly1305.New(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	var msg, ad [32]byte
	out := make([]byte, 0, 48)
	for b.Loop() {
		if _, err := a.k.ECDH(pub); err != nil {
			b.Fatal(err)
		}
		if _, err := c.k.ECDH(a.k.PublicKey()); err != nil {
			b.Fatal(err)
		}
		out = aead.Seal(out[:0], nonce(0), msg[:], ad[:])
	}
}
