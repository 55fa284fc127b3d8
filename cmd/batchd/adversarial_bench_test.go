package main

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// hugeValueBody streams head, then n bytes of filler (x… inside a string,
// or 1,1,… inside an array), then tail, without holding the filler.
type hugeValueBody struct {
	head, tail string
	n          int64
	array      bool
	pos        int64
}

func (g *hugeValueBody) Read(p []byte) (int, error) {
	h, t := int64(len(g.head)), int64(len(g.tail))
	if g.pos >= h+g.n+t {
		return 0, io.EOF
	}
	i := 0
	for i < len(p) && g.pos < h+g.n+t {
		switch {
		case g.pos < h:
			k := copy(p[i:], g.head[g.pos:])
			i, g.pos = i+k, g.pos+int64(k)
		case g.pos < h+g.n:
			c := byte('x')
			if g.array {
				c = "1,"[(g.pos-h)%2]
				if g.pos == h+g.n-1 {
					c = '1'
				}
			}
			p[i] = c
			i, g.pos = i+1, g.pos+1
		default:
			k := copy(p[i:], g.tail[g.pos-h-g.n:])
			i, g.pos = i+k, g.pos+int64(k)
		}
	}
	return i, nil
}

// BenchmarkAdversarialBodies posts 256 MiB create bodies whose bulk is one
// JSON value where a decoder would buffer it (issue 7, item 5), one fresh
// server per shape, and reports the server's peak RSS against the 200 MB
// limit ("4x" posts four such bodies at once).
func BenchmarkAdversarialBodies(b *testing.B) {
	const n = 256<<20 - 1024
	req := `{"custom_id":"ok","params":{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}}`
	shapes := []struct {
		name       string
		head, tail string
		array      bool
		status     int
		parallel   int
	}{
		{"params_string", `{"requests":[{"custom_id":"a","params":{"messages":"`, `"}}]}`, false, 413, 1},
		{"params_array", `{"requests":[{"custom_id":"a","params":{"messages":[`, `]}}]}`, true, 413, 1},
		{"custom_id", `{"requests":[{"custom_id":"`, `","params":{}}]}`, false, 400, 1},
		{"unknown_top_level", `{"junk":"`, `","requests":[` + req + `]}`, false, 200, 1},
		{"unknown_request_field", `{"requests":[{"junk":[`, `],"custom_id":"a","params":{}}]}`, true, 200, 1},
		{"unknown_top_level_4x", `{"junk":"`, `","requests":[` + req + `]}`, false, 200, 4},
	}
	worst := 0.0
	for range b.N {
		for _, s := range shapes {
			p := startServe(b, b.TempDir(), "--sim-latency", "1h")
			var wg sync.WaitGroup
			for range s.parallel {
				wg.Go(func() {
					body := &hugeValueBody{head: s.head, tail: s.tail, n: n - int64(len(s.head)+len(s.tail)), array: s.array}
					resp, err := http.Post(p.URL+"/v1/messages/batches", "application/json", body)
					if err != nil {
						b.Error(err)
						return
					}
					msg, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != s.status {
						b.Errorf("%s: status %d, want %d: %s", s.name, resp.StatusCode, s.status, msg)
					}
					if s.status != 200 && !strings.Contains(string(msg), "requests.0.") {
						b.Errorf("%s: the error does not name the request: %s", s.name, msg)
					}
				})
			}
			wg.Wait()
			rss := float64(peakRSS(b, p.cmd.Process.Pid))
			b.ReportMetric(rss/1e6, s.name+"_peak_RSS_MB")
			worst = max(worst, rss/200e6)
			p.kill(9)
		}
	}
	b.ReportMetric(worst, "worst_RSS_x_limit")
}
