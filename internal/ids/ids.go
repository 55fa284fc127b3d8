// Package ids makes the random ids batchd hands out: a prefix, "01" and 22
// base-62 characters, the shape of Anthropic's ids
// (msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d). It is a leaf so that the store can
// name the events it writes.
package ids

import (
	"crypto/rand"
	"fmt"
	"os"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// New returns prefix followed by "01" and 22 random base-62 characters.
func New(prefix string) string {
	b := make([]byte, 0, len(prefix)+24)
	b = append(b, prefix...)
	b = append(b, '0', '1')
	var buf [22]byte
	if _, err := rand.Read(buf[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	for _, c := range buf {
		b = append(b, base62[int(c)%62])
	}
	return string(b)
}

// Owner names one running batchd in the leases it takes: host, pid and a
// random suffix, so that two processes never share one (not even a
// restarted process and its former self, which may still hold leases that
// must lapse first) and an operator can tell where a lease is held.
func Owner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), New("")[2:10])
}
