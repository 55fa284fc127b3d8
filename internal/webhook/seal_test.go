package webhook

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func TestSealerRoundTrip(t *testing.T) {
	t.Parallel()
	s, err := NewSealer(testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, pt := range []string{"", secretA, strings.Repeat("x", 10000)} {
		a, err := s.Seal(pt)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := s.Seal(pt)
		if a == b {
			t.Error("two seals of the same plaintext are equal: nonce reused")
		}
		if !strings.HasPrefix(a, "v1:") {
			t.Errorf("sealed %q lacks v1:", a)
		}
		if pt != "" && strings.Contains(a, strings.TrimPrefix(pt, SecretPrefix)) {
			t.Error("sealed value contains the plaintext")
		}
		got, err := s.Open(a)
		if err != nil || got != pt {
			t.Fatalf("Open = %q, %v; want the plaintext", got, err)
		}
	}
	if got := fmt.Sprintf("%v %+v", s, *s); strings.Contains(got, string(testKey(1))) {
		t.Error("printing a Sealer shows its key")
	}
}

func TestSealerTamper(t *testing.T) {
	t.Parallel()
	s, _ := NewSealer(testKey(1))
	other, _ := NewSealer(testKey(2))
	sealed, err := s.Seal(secretA)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(sealed, "v1:"))
	// Flip one bit in every byte position in turn: nonce, ciphertext, tag.
	for i := range raw {
		c := bytes.Clone(raw)
		c[i] ^= 0x01
		if _, err := s.Open("v1:" + base64.StdEncoding.EncodeToString(c)); err == nil {
			t.Fatalf("flipped byte %d: opened", i)
		}
	}
	tests := []struct{ name, in string }{
		{"other version", "v2:" + strings.TrimPrefix(sealed, "v1:")},
		{"no version", strings.TrimPrefix(sealed, "v1:")},
		{"not base64", "v1:***"},
		{"truncated", "v1:" + base64.StdEncoding.EncodeToString(raw[:20])},
		{"empty", ""},
		{"appended", "v1:" + base64.StdEncoding.EncodeToString(append(bytes.Clone(raw), 0))},
	}
	for _, tt := range tests {
		if _, err := s.Open(tt.in); err == nil {
			t.Errorf("%s: opened", tt.name)
		}
	}
	if _, err := other.Open(sealed); err == nil {
		t.Error("opened under another key")
	} else if strings.Contains(err.Error(), sealed) {
		t.Error("error quotes the sealed value")
	}
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := NewSealer(make([]byte, n)); err == nil {
			t.Errorf("NewSealer(%d bytes): want an error", n)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "webhook.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != KeySize {
		t.Fatalf("key is %d bytes", len(k1))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("mode = %o, want 600", m)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("second load = %x, %v; want the same key", k2, err)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the key", len(ents))
	}
	// A key sealed under the file survives a "restart".
	s1, _ := NewSealer(k1)
	sealed, _ := s1.Seal(secretA)
	s2, _ := NewSealer(k2)
	if got, err := s2.Open(sealed); err != nil || got != secretA {
		t.Fatalf("open after reload: %q, %v", got, err)
	}
}

func TestLoadOrCreateKeyFormats(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	raw := testKey(7)
	tests := []struct {
		name    string
		content []byte
		want    []byte
	}{
		{"raw bytes", raw, raw},
		{"base64 with newline", []byte(base64.StdEncoding.EncodeToString(raw) + "\n"), raw},
		{"short base64", []byte(base64.StdEncoding.EncodeToString(raw[:16])), nil},
		{"garbage", []byte("not a key at all!"), nil},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		p := write(strings.ReplaceAll(tt.name, " ", "_"), tt.content)
		got, err := LoadOrCreateKey(p)
		if tt.want == nil {
			if err == nil {
				t.Errorf("%s: want an error", tt.name)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, tt.want) {
			t.Errorf("%s: got %x, %v", tt.name, got, err)
		}
	}
}

// TestLoadOrCreateKeyRace: servers starting at once on a shared volume
// must all end up with the same key.
func TestLoadOrCreateKeyRace(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "webhook.key")
	const n = 16
	keys := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreateKey(path) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(keys[i], keys[0]) {
			t.Fatalf("caller %d got a different key", i)
		}
	}
	onDisk, _ := LoadOrCreateKey(path)
	if !bytes.Equal(onDisk, keys[0]) {
		t.Fatal("key on disk differs from the one returned")
	}
}
