package webhook

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KeySize is the size of the server key that encrypts endpoint secrets
// (AES-256).
const KeySize = 32

// sealV1 prefixes every sealed value so the format (and later the key) can
// change without guessing what an old row holds.
const sealV1 = "v1:"

// Sealer encrypts endpoint secrets for storage, so a copy of the database
// alone (a backup, a replica, a leaked file) does not let anyone forge
// webhooks. It is AES-256-GCM with a random 96-bit nonce per value; one
// Sealer is safe for concurrent use.
type Sealer struct {
	// aead is a pointer-holding interface, so printing a Sealer never shows
	// key bytes.
	aead cipher.AEAD
}

// NewSealer returns a Sealer for a 32-byte server key, normally from
// LoadOrCreateKey. The key is copied into the cipher; the caller may wipe
// its slice.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("new sealer: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("new sealer: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("new sealer: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// String keeps the key out of any accidental print.
func (s *Sealer) String() string { return "webhook.Sealer" }

// Seal encrypts plaintext and returns "v1:" + base64(nonce || ciphertext ||
// tag). Each call draws a fresh nonce, so sealing the same secret twice gives
// different strings. The version prefix is authenticated as associated data,
// so a value cannot be relabelled as another format.
func (s *Sealer) Seal(plaintext string) (string, error) {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal: %w", err)
	}
	out := s.aead.Seal(nonce, nonce, []byte(plaintext), []byte(sealV1))
	return sealV1 + base64.StdEncoding.EncodeToString(out), nil
}

// Open reverses Seal. Any change to the stored string, or a different key,
// makes it fail rather than return wrong bytes. Errors never include the
// input, which is key material to an attacker holding the server key.
func (s *Sealer) Open(sealed string) (string, error) {
	rest, ok := strings.CutPrefix(sealed, sealV1)
	if !ok {
		return "", errors.New("open: unknown format, want a v1: value")
	}
	raw, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		return "", fmt.Errorf("open: %w", err)
	}
	ns := s.aead.NonceSize()
	if len(raw) < ns+s.aead.Overhead() {
		return "", errors.New("open: value is truncated")
	}
	pt, err := s.aead.Open(nil, raw[:ns], raw[ns:], []byte(sealV1))
	if err != nil {
		// cipher's error is a bare "message authentication failed".
		return "", errors.New("open: authentication failed (value tampered with, or sealed under another key)")
	}
	return string(pt), nil
}

// LoadOrCreateKey returns the server key stored at path, creating the file
// with a new random key when it does not exist, so a fresh install needs no
// setup while a restart keeps every stored secret readable.
//
// The file holds the key as standard base64 and a newline; a file of exactly
// 32 raw bytes is accepted too, so `head -c 32 /dev/urandom > key` works.
// A new file is written with mode 0600 to a temporary file in the same
// directory, fsynced, and then linked into place, which (unlike rename)
// never replaces a key another process created meanwhile: losing that race
// means reading the winner's key, so two servers sharing a volume agree.
// Where hard links are unsupported it falls back to rename. Losing this file
// makes every stored endpoint secret unreadable; back it up with the
// database.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := readKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // after a link, or a failure; a no-op after a rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("create key: %w", err)
	}
	if _, err := tmp.WriteString(base64.StdEncoding.EncodeToString(key) + "\n"); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("create key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("create key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it first; use theirs.
			return readKey(path)
		}
		if err := os.Rename(tmpName, path); err != nil {
			return nil, fmt.Errorf("create key: %w", err)
		}
	}
	if d, err := os.Open(dir); err == nil {
		// Make the new directory entry durable; some systems cannot sync a
		// directory, and the key is already safely in the file.
		_ = d.Sync()
		_ = d.Close()
	}
	return key, nil
}

// ReadKey reads a key file in the format LoadOrCreateKey writes, and never
// creates one: a key named explicitly (--webhook-key-file) is the one every
// process of a cluster shares, and a new random one would open nothing.
func ReadKey(path string) ([]byte, error) { return readKey(path) }

// ParseKey decodes a key given as text (BATCHD_WEBHOOK_KEY): the 32 bytes
// in standard base64, the same text a key file holds, surrounding space
// ignored. Errors never quote the value.
func ParseKey(text string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("parse key: not standard base64 (want %d bytes, e.g. `head -c %d /dev/urandom | base64`)", KeySize, KeySize)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("parse key: decodes to %d bytes, want %d", len(key), KeySize)
	}
	return key, nil
}

// readKey reads and decodes a key file. The returned error wraps
// fs.ErrNotExist when the file is missing, and never quotes the file's bytes.
func readKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	if len(b) == KeySize {
		return b, nil
	}
	key, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b)))
	if err != nil {
		return nil, fmt.Errorf("read key: %s: not base64 and not %d raw bytes", path, KeySize)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("read key: %s: decodes to %d bytes, want %d", path, len(key), KeySize)
	}
	return key, nil
}

// keyCheckText is what a server seals for the store's key check
// (store.Store.WebhookKeyCheck); only whether it opens matters.
const keyCheckText = "batchd webhook key check"

// ErrWrongKey means the server key cannot open the secrets already stored:
// they were sealed under another key.
var ErrWrongKey = errors.New("the webhook key cannot open the webhook secrets already stored (they were sealed under another key)")

// CheckKey makes sure s holds the key the database's secrets were sealed
// with, before s seals anything: check is the store's WebhookKeyCheck,
// which records a value sealed by the first server and returns the values
// to try. It fails with ErrWrongKey when one does not open.
func (s *Sealer) CheckKey(check func(sealed string) ([]string, error)) error {
	mine, err := s.Seal(keyCheckText)
	if err != nil {
		return fmt.Errorf("check key: %w", err)
	}
	stored, err := check(mine)
	if err != nil {
		return fmt.Errorf("check key: %w", err)
	}
	for _, v := range stored {
		if _, err := s.Open(v); err != nil {
			return ErrWrongKey
		}
	}
	return nil
}
