package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIdleKeepAliveClosed: an idle keep-alive connection is closed by the
// server after --idle-timeout instead of being held forever.
func TestIdleKeepAliveClosed(t *testing.T) {
	t.Parallel()
	p := startServe(t, t.TempDir(), "--idle-timeout", "500ms")
	conn, err := net.Dial("tcp", strings.TrimPrefix(p.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// Now idle: the server must close its end well before this deadline.
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: %v, want it closed by the server (EOF)", err)
	}
}

// TestStorageReserveFlag: --storage-reserve-bytes sets the size of the
// reserve file kept beside the database.
func TestStorageReserveFlag(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := startServe(t, dir, "--storage-reserve-bytes", "3145728")
	defer p.kill(syscall.SIGTERM)
	fi, err := os.Stat(filepath.Join(dir, "batchd.db-reserve"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 3<<20 {
		t.Fatalf("reserve is %d bytes, want %d", fi.Size(), 3<<20)
	}
}
