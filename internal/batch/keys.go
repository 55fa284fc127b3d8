package batch

import (
	"crypto/sha256"
	"encoding/hex"
)

// NewAPIKey returns a new secret key, the hash to store for it and a short
// prefix that identifies it in listings without revealing it.
func NewAPIKey() (key, hash, prefix string) {
	key = NewID("sk-batchd-") + NewID("")
	return key, HashKey(key), key[:len("sk-batchd-")+8]
}

// HashKey is how keys are stored and looked up: a plain SHA-256 is enough
// because keys are long random strings, not passwords.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}
