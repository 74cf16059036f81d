package token

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLoadPrivateKeyPEM(t *testing.T) {
	t.Parallel()
	ks := testKeys(t)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k any) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(k))})
	}
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(ks.broker)})

	for _, in := range [][]byte{pkcs8(ks.broker), pkcs1} {
		k, err := LoadPrivateKeyPEM(in)
		if err != nil {
			t.Fatalf("LoadPrivateKeyPEM: %v", err)
		}
		if !k.Equal(ks.broker) {
			t.Error("LoadPrivateKeyPEM returned another key")
		}
	}

	for _, tc := range []struct {
		name, in, wantMsg string
	}{
		{"not PEM", "hello", "no PEM block"},
		{"weak", string(pkcs8(weak)), "at least 2048"},
		{"EC", string(pkcs8(ec)), "not RSA"},
		{"public key", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(&ks.broker.PublicKey))})), `"PUBLIC KEY"`},
		{"encrypted PKCS#8", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "encrypted"},
		{"encrypted PKCS#1", "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n-----END RSA PRIVATE KEY-----\n", "encrypted"},
		{"garbage body", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "PKCS#8"},
	} {
		_, err := LoadPrivateKeyPEM([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("%s: got %v, want an error saying %q", tc.name, err, tc.wantMsg)
		}
	}
}

func TestParsePublicKeyPEM(t *testing.T) {
	t.Parallel()
	ks := testKeys(t)
	pub := &ks.platform.PublicKey
	spki := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(pub))})
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(pub)})
	for _, in := range [][]byte{spki, pkcs1} {
		k, err := ParsePublicKeyPEM(in)
		if err != nil {
			t.Fatalf("ParsePublicKeyPEM: %v", err)
		}
		if !k.Equal(pub) {
			t.Error("ParsePublicKeyPEM returned another key")
		}
	}

	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	private := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(ks.platform))})
	for _, tc := range []struct {
		name, in, wantMsg string
	}{
		{"empty", "", "no PEM block"},
		{"weak", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(&weak.PublicKey))})), "at least 2048"},
		{"EC", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(&ec.PublicKey))})), "not RSA"},
		{"private key", string(private), "private key"},
		{"certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate"},
		{"garbage body", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "SPKI"},
	} {
		_, err := ParsePublicKeyPEM([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("%s: got %v, want an error saying %q", tc.name, err, tc.wantMsg)
		}
		// A private key handed over by mistake must not end up in a log.
		if err != nil && strings.Contains(err.Error(), "MII") {
			t.Errorf("%s: error echoes key material: %v", tc.name, err)
		}
	}
}

// TestParsePublicKeyPEMBounds checks the size and exponent limits at their
// edges. The moduli are made up (an odd number of the right length): the
// checks read only the length and the exponent.
func TestParsePublicKeyPEMBounds(t *testing.T) {
	t.Parallel()
	modulus := func(bits int) *big.Int {
		n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
		return n.SetBit(n, 0, 1)
	}
	for _, tc := range []struct {
		name    string
		key     rsa.PublicKey
		wantMsg string // "" when the key must be accepted
	}{
		{"smallest modulus", rsa.PublicKey{N: modulus(MinRSABits), E: 65537}, ""},
		{"one bit short", rsa.PublicKey{N: modulus(MinRSABits - 1), E: 65537}, "at least 2048"},
		{"largest modulus", rsa.PublicKey{N: modulus(MaxRSABits), E: 65537}, ""},
		{"one bit over", rsa.PublicKey{N: modulus(MaxRSABits + 1), E: 65537}, "at most 8192"},
		{"exponent 3", rsa.PublicKey{N: modulus(MinRSABits), E: 3}, ""},
		{"exponent 1", rsa.PublicKey{N: modulus(MinRSABits), E: 1}, "exponent 1"},
		{"even exponent", rsa.PublicKey{N: modulus(MinRSABits), E: 65538}, "exponent 65538"},
	} {
		in := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&tc.key)})
		k, err := ParsePublicKeyPEM(in)
		switch {
		case tc.wantMsg == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.wantMsg == "" && !k.Equal(&tc.key):
			t.Errorf("%s: ParsePublicKeyPEM returned another key", tc.name)
		case tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)):
			t.Errorf("%s: got %v, want an error saying %q", tc.name, err, tc.wantMsg)
		}
	}
}

func TestJWKS(t *testing.T) {
	t.Parallel()
	ks := testKeys(t)
	ring, err := NewKeyRing(ks.broker, ks.brokerNext)
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(ring.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 2 {
		t.Fatalf("JWKS has %d keys, want 2", len(set.Keys))
	}
	for i, k := range set.Keys {
		var names []string
		for name := range k {
			names = append(names, name)
		}
		if diff := cmp.Diff([]string{"alg", "e", "kid", "kty", "n", "use"}, names, cmpSorted); diff != "" {
			t.Errorf("key %d members (-want +got):\n%s", i, diff)
		}
		if k["kty"] != "RSA" || k["use"] != "enc" || k["alg"] != "RSA-OAEP-256" || k["e"] != "AQAB" {
			t.Errorf("key %d = %v", i, k)
		}
	}
	want, err := Thumbprint(&ks.broker.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if set.Keys[0]["kid"] != want || ring.CurrentKID() != want {
		t.Errorf("current kid = %v / %v, want the thumbprint %v", set.Keys[0]["kid"], ring.CurrentKID(), want)
	}
	// JWKS must return a copy: the ring is shared.
	b := ring.JWKS()
	b[0] = 'X'
	if ring.JWKS()[0] != '{' {
		t.Error("JWKS returned the ring's own buffer")
	}
}

var cmpSorted = cmp.Transformer("sort", func(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return out
})

// TestThumbprintRFC7638 checks the kid against the example of RFC 7638 §3.1.
func TestThumbprintRFC7638(t *testing.T) {
	t.Parallel()
	const n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(must(base64.RawURLEncoding.DecodeString(n))), E: 65537}
	got, err := Thumbprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	if want := "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"; got != want {
		t.Errorf("Thumbprint = %s, want %s", got, want)
	}
}

func TestNewKeyRingRefuses(t *testing.T) {
	t.Parallel()
	ks := testKeys(t)
	if _, err := NewKeyRing(nil, nil); err == nil {
		t.Error("NewKeyRing(nil, nil) succeeded")
	}
	if _, err := NewKeyRing(ks.broker, ks.broker); err == nil {
		t.Error("NewKeyRing with next = current succeeded")
	}
	if _, err := NewKeyRingWithIDs(Key{ID: "a", Private: ks.broker}, Key{ID: "a", Private: ks.brokerNext}); err == nil {
		t.Error("NewKeyRingWithIDs with equal ids succeeded")
	}
	ring, err := NewKeyRingWithIDs(Key{ID: "2026-01", Private: ks.broker}, Key{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"2026-01"}, ring.KIDs()); diff != "" {
		t.Errorf("KIDs (-want +got):\n%s", diff)
	}
}

func TestJWKSWithSigner(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	ring, err := NewKeyRing(k.broker, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ring.JWKSWithSigner("gradebroker")
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 2 || set.Keys[1]["kid"] != "gradebroker" || set.Keys[1]["use"] != "sig" || set.Keys[1]["alg"] != "RS512" ||
		set.Keys[1]["n"] != set.Keys[0]["n"] || set.Keys[1]["d"] != nil {
		t.Errorf("JWKSWithSigner = %s; want the encryption key and the same public key as kid gradebroker, use sig, alg RS512", b)
	}
}
