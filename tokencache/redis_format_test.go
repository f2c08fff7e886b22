package tokencache_test

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/tokenproxy/tokenproxy/internal/testenv"
	"github.com/tokenproxy/tokenproxy/tokencache"
	"github.com/tokenproxy/tokenproxy/tokencache/storetest"
)

// sealedFields are the fields whose values are sealed.
var sealedFields = []string{"at", "rt", "ah", "rh"}

// TestRedisRecordFormats: format 2 keeps sealed values as raw bytes; a
// record of format 1 (base64 sealed values, as the previous release wrote)
// still reads, the same record, and is written in format 2 by the next
// write. Damaged values of either format are *SealErrors.
func TestRedisRecordFormats(t *testing.T) {
	r := testenv.StartRedis(t)
	raw := r.Client(t)
	s := newRedisStore(t, tokencache.RedisConfig{Client: newClient(t, r.URL), Keyring: mustKeyring(t, newKey(t))})
	ctx := ctxTimeout(t, 10*time.Second)
	rec := storetest.FullRecord("c1")
	rec.AccessHandle, rec.RefreshHandle = "handle-a", "handle-r"
	gen, err := tokencache.Put(ctx, s, rec)
	if err != nil {
		t.Fatal(err)
	}
	rec.Generation = gen
	key := s.RecordKey("c1")
	vals, err := raw.HGetAll(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if vals["v"] != "2" {
		t.Fatalf("written in format %q, want 2", vals["v"])
	}
	// Raw: nonce (12) + ciphertext + tag (16), no base64.
	if got, want := len(vals["at"]), 12+len(rec.AccessToken.Reveal())+16; got != want {
		t.Fatalf("sealed access token %d bytes, want %d (raw nonce||ciphertext||tag)", got, want)
	}

	// The same record in format 1.
	v1 := map[string]any{"v": "1"}
	for _, f := range sealedFields {
		v1[f] = base64.RawStdEncoding.EncodeToString([]byte(vals[f]))
	}
	if err := raw.HSet(ctx, key, v1).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "c1")
	if err != nil {
		t.Fatalf("Get of a format 1 record: %v", err)
	}
	storetest.CheckRecord(t, got, rec)
	if got.AccessHandle != rec.AccessHandle || got.RefreshHandle != rec.RefreshHandle {
		t.Fatal("format 1 handles did not read back")
	}

	// The next write is in format 2, and reads back the same.
	if _, err := tokencache.CompareAndSwap(ctx, s, got, got.Generation); err != nil {
		t.Fatal(err)
	}
	if v, _ := raw.HGet(ctx, key, "v").Result(); v != "2" {
		t.Fatalf("rewritten in format %q, want 2", v)
	}
	again, err := s.Get(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if again.AccessToken != rec.AccessToken || again.RefreshToken != rec.RefreshToken || again.AccessHandle != rec.AccessHandle {
		t.Fatal("tokens changed across the format change")
	}

	// Damaged values: a base64 value read as format 2, a raw one read as
	// format 1, a flipped byte.
	cur, _ := raw.HGetAll(ctx, key).Result()
	for _, tc := range []struct {
		name   string
		fields map[string]any
	}{
		{"format 1 value in a format 2 record", map[string]any{"at": base64.RawStdEncoding.EncodeToString([]byte(cur["at"]))}},
		{"format 2 value in a format 1 record", map[string]any{"v": "1", "rt": base64.RawStdEncoding.EncodeToString([]byte(cur["rt"])), "at": cur["at"]}},
		{"flipped byte", map[string]any{"at": cur["at"][:20] + string(cur["at"][20]^1) + cur["at"][21:]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := raw.HSet(ctx, key, cur).Err(); err != nil {
				t.Fatal(err)
			}
			if err := raw.HSet(ctx, key, tc.fields).Err(); err != nil {
				t.Fatal(err)
			}
			_, err := s.Get(ctx, "c1")
			var se *tokencache.SealError
			if !errors.As(err, &se) {
				t.Fatalf("Get: %v, want a *SealError", err)
			}
			checkNoTokens(t, err.Error(), rec)
		})
	}
}
