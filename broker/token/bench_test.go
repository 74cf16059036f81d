package token

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"sync"
	"testing"
	"time"
)

var keys4096 = sync.OnceValue(func() [2]*rsa.PrivateKey {
	var ks [2]*rsa.PrivateKey
	var wg sync.WaitGroup
	for i := range ks {
		wg.Go(func() {
			k, err := rsa.GenerateKey(rand.Reader, 4096)
			if err != nil {
				panic(err)
			}
			ks[i] = k
		})
	}
	wg.Wait()
	return ks
})

// benchmarkOpen measures the crypto-bound cost of Open: one RSA-OAEP
// decryption, one RS512 verification and the claim checks, on a typical
// sendjob-sized payload, from all GOMAXPROCS goroutines at once. The replay
// guard accepts everything so that one token can be reused.
func benchmarkOpen(b *testing.B, broker, platform *rsa.PrivateKey) {
	ring, err := NewKeyRing(broker, nil)
	if err != nil {
		b.Fatal(err)
	}
	o := &Opener{
		Keys:     ring,
		Signers:  StaticSigners{platformName: &platform.PublicKey},
		Replay:   acceptAll{},
		Audience: brokerName,
		Now:      clock,
	}
	p := payload(b, map[string]any{
		"jobdata": map[string]any{"source": strings.Repeat("x = input()\n", 100), "tests": []int{1, 2, 3}},
		"jobname": "bench", "tags": "python3", "exp": testNow.Add(time.Minute).Unix(),
	})
	tok, err := Seal(p, platformName, platform, &broker.PublicKey, ring.CurrentKID(), false)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(tok)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := o.Open(context.Background(), tok, "test"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "opens/s")
}

func BenchmarkOpen2048(b *testing.B) {
	ks := testKeys(b)
	benchmarkOpen(b, ks.broker, ks.platform)
}

func BenchmarkOpen4096(b *testing.B) {
	ks := keys4096()
	benchmarkOpen(b, ks[0], ks[1])
}

func BenchmarkSeal2048(b *testing.B) {
	ks := testKeys(b)
	p := payload(b, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := Seal(p, platformName, ks.platform, &ks.broker.PublicKey, "", false); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "seals/s")
}
