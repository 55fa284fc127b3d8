package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shutdownGrace is the --shutdown-timeout of these tests: long, so that a
// stop that waits for it is told apart from one that does not by a bound
// (half of it) no slow machine comes near.
const shutdownGrace = 60 * time.Second

// TestShutdownEndsStreams: open event streams and a results download whose
// client stopped reading are ended when the shutdown begins, so SIGTERM
// stops the process (exit 0, a clean stop) well before the grace period.
// Before, http.Server.Shutdown waited for them until the grace ran out.
func TestShutdownEndsStreams(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// open starts what must not hold the shutdown.
		open func(t *testing.T, url string)
	}{
		{"workspace event stream", func(t *testing.T, url string) {
			openStream(t, url+"/v1/events")
		}},
		{"batch event stream", func(t *testing.T, url string) {
			// Retried with a backoff of an hour: the batch stays in
			// progress with nothing in flight, so its stream stays open
			// and only the stream could hold the shutdown.
			b := createBatch(t, url, bodyReader(1, func(int) string { return "[[sim error=overloaded_error]]" }))
			openStream(t, url+"/v1/messages/batches/"+b.ID+"/events")
		}},
		{"stalled results download", func(t *testing.T, url string) {
			// About 18 MB of results: far more than the socket buffers
			// hold, so the server blocks writing to a client that reads
			// nothing.
			b := createBatch(t, url, bodyReader(20000, func(i int) string { return fmt.Sprintf("hello %d", i) }))
			waitEnded(t, url, b.ID, 2*time.Minute)
			stalledGet(t, url+"/v1/messages/batches/"+b.ID+"/results")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startServe(t, t.TempDir(), "--shutdown-timeout", shutdownGrace.String(), "--retry-backoff", "1h")
			tc.open(t, p.URL)
			start := time.Now()
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(shutdownGrace / 2):
				t.Fatalf("still running %s after SIGTERM (--shutdown-timeout %s): the %s held the shutdown\n%s",
					time.Since(start).Round(time.Second), shutdownGrace, tc.name, tail(p.Logs(), 20))
			}
			if code := p.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(p.Logs(), "stopped") {
				t.Fatalf("exit %d, want 0 after a clean stop:\n%s", code, tail(p.Logs(), 20))
			}
		})
	}
}

// TestSecondSignalExitsAtOnce: a second SIGTERM or SIGINT while the
// shutdown waits for a request in flight to a slow backend exits at once
// with 128 + the signal's number (143, 130), the shell's convention for a
// process ended by a signal; the abandoned request is rescued by the next
// start. Before, the second signal was ignored and the process waited the
// whole grace period.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		code int
	}{
		{"SIGTERM twice", syscall.SIGTERM, 143},
		{"SIGINT twice", syscall.SIGINT, 130},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			// A rate-controlled simulator, so GET /v1/backends shows the
			// request in flight.
			cfg := filepath.Join(dir, "batchd.toml")
			toml := "[[backends]]\nname = \"slow\"\nkind = \"sim\"\nconcurrency = 4\nfixed_concurrency = true\n\n[[routes]]\nmodel = \"*\"\nbackend = \"slow\"\n"
			if err := os.WriteFile(cfg, []byte(toml), 0o600); err != nil {
				t.Fatal(err)
			}
			flags := []string{"--config", cfg, "--shutdown-timeout", shutdownGrace.String()}
			p := startServe(t, filepath.Join(dir, "data"), flags...)
			b := createBatch(t, p.URL, bodyReader(1, func(int) string { return "[[sim latency=10m]]" }))
			waitInFlight(t, p.URL, 1)

			p.cmd.Process.Signal(tc.sig)
			waitLog(t, p, "shutting down")
			start := time.Now()
			p.cmd.Process.Signal(tc.sig)
			select {
			case <-p.done:
			case <-time.After(shutdownGrace / 2):
				t.Fatalf("still running %s after a second %s: it was ignored\n%s", time.Since(start).Round(time.Second), tc.sig, tail(p.Logs(), 20))
			}
			if code := p.cmd.ProcessState.ExitCode(); code != tc.code {
				t.Fatalf("exit %d after a second %s, want %d:\n%s", code, tc.sig, tc.code, tail(p.Logs(), 20))
			}
			if !strings.Contains(p.Logs(), "second signal") {
				t.Errorf("the exit is not explained in the log:\n%s", tail(p.Logs(), 20))
			}

			// Nothing stranded: the next start sends the request again.
			p2 := startServe(t, filepath.Join(dir, "data"), flags...)
			waitInFlight(t, p2.URL, 1)
			if got := getBatch(t, p2.URL, b.ID); got.ProcessingStatus != "in_progress" || got.RequestCounts.Processing != 1 {
				t.Fatalf("after restart: %+v, want in progress with its request processing", got)
			}
		})
	}
}

// openStream opens an event stream and reads it until the test ends.
func openStream(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		t.Fatalf("GET %s: %d %s", url, res.StatusCode, raw)
	}
	go func() {
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}()
}

// stalledGet sends a GET on a connection with a small receive buffer and
// never reads the answer, as a client that stopped reading would.
func stalledGet(t *testing.T, url string) {
	t.Helper()
	host := strings.TrimPrefix(url, "http://")
	host, path, _ := strings.Cut(host, "/")
	// The buffer is set before connecting, so the window offered to the
	// server is small from the start.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "GET /%s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
		t.Fatal(err)
	}
	// The status line says the download began; then nothing more is read.
	line, err := bufio.NewReaderSize(conn, 16).ReadString('\n')
	if err != nil || !strings.Contains(line, " 200 ") {
		t.Fatalf("GET %s: %q %v", url, line, err)
	}
	waitSendBlocked(t, conn)
}

// waitSendBlocked waits until the server's end of conn has stopped
// sending: its send queue (Linux's /proc/net/tcp) holds data and has not
// changed over several looks. Only then is the server's write blocked,
// which a cancelled context alone would not end; earlier, the handler
// would see the cancel between pages. Where /proc/net/tcp is missing it
// returns at once (the test then shows less).
func waitSendBlocked(t *testing.T, conn net.Conn) {
	t.Helper()
	client := conn.LocalAddr().(*net.TCPAddr).Port
	server := conn.RemoteAddr().(*net.TCPAddr).Port
	last, same := int64(-1), 0
	for deadline := time.Now().Add(time.Minute); same < 10; time.Sleep(20 * time.Millisecond) {
		q, ok := sendQueue(server, client)
		if !ok {
			return
		}
		if q > 0 && q == last {
			same++
		} else {
			same = 0
		}
		last = q
		if time.Now().After(deadline) {
			t.Fatalf("the server's send queue never settled (last %d bytes)", last)
		}
	}
}

// sendQueue is the tx_queue of the TCP socket from local port to remote
// port, from /proc/net/tcp; ok is false when it cannot be read.
func sendQueue(local, remote int) (int64, bool) {
	raw, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, false
	}
	port := func(addr string) int64 {
		_, hex, _ := strings.Cut(addr, ":")
		n, _ := strconv.ParseInt(hex, 16, 32)
		return n
	}
	for _, line := range strings.Split(string(raw), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || port(f[1]) != int64(local) || port(f[2]) != int64(remote) {
			continue
		}
		tx, _, _ := strings.Cut(f[4], ":")
		n, _ := strconv.ParseInt(tx, 16, 64)
		return n, true
	}
	return 0, false
}

// waitInFlight waits until the backends have n requests in flight.
func waitInFlight(t *testing.T, url string, n int) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		res, err := http.Get(url + "/v1/backends")
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Data []struct {
				InFlight int `json:"in_flight"`
			} `json:"data"`
		}
		err = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, b := range body.Data {
			total += b.InFlight
		}
		if total >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests in flight, want %d", total, n)
		}
	}
}

// waitLog waits until the process has logged s.
func waitLog(t *testing.T, p *proc, s string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(p.Logs(), s); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", s, tail(p.Logs(), 20))
		}
	}
}
