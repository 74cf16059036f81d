package token

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// TestOpenJavaScriptTokens opens tokens made outside Go: by the "jose" npm
// package and by a hand-written RFC 7516 implementation on node:crypto (see
// testdata/interop/make_tokens.mjs, which made tokens.json).
func TestOpenJavaScriptTokens(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("testdata/interop/tokens.json")
	if err != nil {
		t.Fatal(err)
	}
	var fx struct {
		Now        int64  `json:"now"`
		BrokerKey  string `json:"broker_private_key"`
		PlatformPK string `json:"platform_public_key"`
		BrokerKID  string `json:"broker_kid"`
		Tokens     []struct {
			Name, Request, Token string
		} `json:"tokens"`
	}
	if err := json.Unmarshal(b, &fx); err != nil {
		t.Fatal(err)
	}
	brokerKey, err := LoadPrivateKeyPEM([]byte(fx.BrokerKey))
	if err != nil {
		t.Fatal(err)
	}
	platformKey, err := ParsePublicKeyPEM([]byte(fx.PlatformPK))
	if err != nil {
		t.Fatal(err)
	}
	ring, err := NewKeyRing(brokerKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Our kid and jose's calculateJwkThumbprint must agree, or platforms
	// that name the key from the JWKS would be refused.
	if ring.CurrentKID() != fx.BrokerKID {
		t.Errorf("our kid %q, JavaScript's thumbprint %q", ring.CurrentKID(), fx.BrokerKID)
	}
	now := func() time.Time { return time.Unix(fx.Now, 0) }
	o := &Opener{
		Keys:     ring,
		Signers:  StaticSigners{platformName: platformKey},
		Replay:   &MemoryReplayGuard{Now: now},
		Audience: brokerName,
		Now:      now,
	}
	for _, tc := range fx.Tokens {
		if _, _, err := o.Open(context.Background(), tc.Token, tc.Request); err != nil {
			t.Errorf("%s: %v", tc.Name, err)
		}
	}
}
