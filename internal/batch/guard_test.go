package batch

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/batchd/batchd/internal/store/sqlite"
)

func guarded(t *testing.T, body string, maxParams int64) (string, error) {
	t.Helper()
	// Read in odd small pieces so that every state crosses a chunk edge.
	g := newBodyGuard(iotestHalf{strings.NewReader(body)}, maxParams)
	g.in = make([]byte, 7)
	out, err := io.ReadAll(g)
	return string(out), err
}

type iotestHalf struct{ r io.Reader }

func (h iotestHalf) Read(p []byte) (int, error) {
	if len(p) > 3 {
		p = p[:3]
	}
	return h.r.Read(p)
}

// TestBodyGuardElidesUnknownValues: unknown members of the body and of each
// request lose their values (null) whatever their type; everything else
// passes byte for byte.
func TestBodyGuardElidesUnknownValues(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{`{"requests":[{"custom_id":"a","params":{"x":"y"}}]}`, `{"requests":[{"custom_id":"a","params":{"x":"y"}}]}`},
		{`{"junk":"s\"tr\\","requests":[]}`, `{"junk":null,"requests":[]}`},
		{`{"junk": 12345 ,"requests":[]}`, `{"junk": null ,"requests":[]}`},
		{`{"junk":true}`, `{"junk":null}`},
		{`{"junk":{"a":[1,{"b":"}"}]},"requests":[]}`, `{"junk":null,"requests":[]}`},
		{`{"junk":[[]],"requests":[{"custom_id":"a","extra":[1,2],"params":{"extra":"kept"},"more":-1.5e3}]}`,
			`{"junk":null,"requests":[{"custom_id":"a","extra":null,"params":{"extra":"kept"},"more":null}]}`},
		{` { "requests" : [ { "custom_id" : "a" , "x" : "yy" } , { "y" : { } } ] } `,
			` { "requests" : [ { "custom_id" : "a" , "x" : null } , { "y" : null } ] } `},
		{`{"requests":[{"params":{"a":{"b":[1,"x"]}},"custom_id":"b"}]}`, `{"requests":[{"params":{"a":{"b":[1,"x"]}},"custom_id":"b"}]}`},
		// An escaped key might spell a known one: it is kept as it is.
		{`{"re\u0071uests":[1]}`, `{"re\u0071uests":[1]}`},
		// Broken JSON passes through for the decoder to report.
		{`{"requests":[}`, `{"requests":[}`},
	}
	for _, tt := range tests {
		got, err := guarded(t, tt.in, 1<<20)
		if err != nil || got != tt.want {
			t.Errorf("guard(%s)\n = %s, %v\nwant %s", tt.in, got, err, tt.want)
		}
	}
}

func TestBodyGuardLimits(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 2000)
	tests := []struct {
		in   string
		kind Kind
		want string
	}{
		{`{"requests":[{"custom_id":"a","params":{}},{"custom_id":"b","params":{"p":"` + big + `"}}]}`, KindTooLarge, "requests.1.params: params are larger than the 1000-byte limit"},
		{`{"requests":[{"custom_id":"a","params":{"p":[` + strings.Repeat("1,", 600) + `1]}}]}`, KindTooLarge, "requests.0.params"},
		{`{"requests":[{"custom_id":"` + big + `","params":{}}]}`, KindInvalid, "requests.0.custom_id: String should have at most 64 characters"},
		{`{"requests":[{"custom_id":[` + strings.Repeat("1,", 600) + `1]}]}`, KindInvalid, "requests.0.custom_id"},
		{`{"` + strings.Repeat("k", maxTokenBytes+1) + `":1}`, KindInvalid, "body: a JSON token of more than"},
		{`{"requests":[{"` + strings.Repeat("k", maxTokenBytes+1) + `":1}]}`, KindInvalid, "requests.0: a JSON token"},
		{`{"requests":[` + strings.Repeat("[", maxDepth+1), KindInvalid, "nested more than"},
	}
	for _, tt := range tests {
		_, err := guarded(t, tt.in, 1000)
		var e *Error
		if !errors.As(err, &e) || e.Kind != tt.kind || !strings.Contains(e.Message, tt.want) {
			t.Errorf("guard(%.60s…) = %v, want %v %q", tt.in, err, tt.kind, tt.want)
		}
	}
	// Exactly at the limit passes.
	exact := `{"p":"` + strings.Repeat("x", 1000-8) + `"}`
	if _, err := guarded(t, `{"requests":[{"custom_id":"a","params":`+exact+`}]}`, 1000); err != nil {
		t.Errorf("params of exactly the limit: %v", err)
	}
}

// genBody streams {"requests":[…]} with one value of n bytes at a chosen
// place, without ever holding it.
type genBody struct {
	head, tail string
	n          int64
	quote      bool // the big value is a string (else an array of 1s)
	pos        int64
}

func (g *genBody) Read(p []byte) (int, error) {
	size := int64(len(g.head)) + g.n + int64(len(g.tail))
	if g.pos >= size {
		return 0, io.EOF
	}
	i := 0
	for i < len(p) && g.pos < size {
		switch {
		case g.pos < int64(len(g.head)):
			k := copy(p[i:], g.head[g.pos:])
			i += k
			g.pos += int64(k)
		case g.pos < int64(len(g.head))+g.n:
			left := int64(len(g.head)) + g.n - g.pos
			k := min(int64(len(p)-i), left)
			for j := range k {
				c := byte('x')
				if !g.quote {
					c = "1,"[(g.pos+j-int64(len(g.head)))%2]
					if g.pos+j == int64(len(g.head))+g.n-1 {
						c = '1'
					}
				}
				p[i+int(j)] = c
			}
			i += int(k)
			g.pos += k
		default:
			k := copy(p[i:], g.tail[g.pos-int64(len(g.head))-g.n:])
			i += k
			g.pos += int64(k)
		}
	}
	return i, nil
}

// TestCreateMemoryWithAdversarialValues creates batches whose one huge
// value (200 MiB) sits where the decoder would buffer it: the bytes the
// server allocates stay a small fraction of it. Not parallel: it reads the
// process's allocation counter.
func TestCreateMemoryWithAdversarialValues(t *testing.T) {
	const n = 200 << 20
	req := `{"custom_id":"ok","params":{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}}`
	tests := []struct {
		name       string
		head, tail string
		quote      bool
		wantErr    string
	}{
		{"unknown top-level string", `{"junk":"`, `","requests":[` + req + `]}`, true, ""},
		{"unknown top-level array", `{"junk":[`, `],"requests":[` + req + `]}`, false, ""},
		{"unknown request field", `{"requests":[{"junk":"`, `","custom_id":"a","params":{}}]}`, true, ""},
		{"custom_id", `{"requests":[{"custom_id":"`, `","params":{}}]}`, true, "requests.0.custom_id: String should have at most 64 characters"},
		{"params string", `{"requests":[` + req + `,{"custom_id":"b","params":{"messages":"`, `"}}]}`, true, "requests.1.params: params are larger than"},
		{"params array", `{"requests":[{"custom_id":"b","params":{"messages":[`, `]}}]}`, false, "requests.0.params: params are larger than"},
	}
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "batchd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc := NewService(st, Config{MaxBodyBytes: 1 << 30, MaxParamsBytes: 4 << 20})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := svc.Create(context.Background(), "w", nil, &genBody{head: tt.head, tail: tt.tail, n: n, quote: tt.quote})
			runtime.ReadMemStats(&after)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("create: %v, want %q", err, tt.wantErr)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 40<<20 {
				t.Fatalf("a create with a %d MiB value allocated %d MiB", n>>20, alloc>>20)
			}
		})
	}
}
