package delegate

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"testing"

	"github.com/batchd/batchd/internal/store"
)

// The create body is streamed with a Content-Length computed beforehand:
// they must agree byte for byte, and params must go out exactly as stored.
func TestBodySizeIsExactAndParamsUntouched(t *testing.T) {
	t.Parallel()
	for _, reqs := range [][]store.ClaimedRequest{
		nil,
		{{ID: 1, Params: json.RawMessage(`{"model":"m"}`)}},
		{{ID: 7, Params: json.RawMessage("{\n \"model\" : \"m\", \"x\":\"\\u00e9\"}")}, {ID: 123456789, Params: json.RawMessage(`{}`)}},
	} {
		// As the builder does: spool the items, count their sizes.
		f, err := os.CreateTemp(t.TempDir(), "items")
		if err != nil {
			t.Fatal(err)
		}
		size := int64(len(bodyHead) + len(bodyTail))
		for i, c := range reqs {
			if err := appendItem(f, c, i == 0); err != nil {
				t.Fatal(err)
			}
			size += itemSize(c)
		}
		if len(reqs) > 0 {
			size--
		}
		var buf bytes.Buffer
		for range 2 { // a retry sends the same bytes
			buf.Reset()
			if _, err := io.Copy(&buf, createBody(f, size)); err != nil {
				t.Fatal(err)
			}
			if int64(buf.Len()) != size {
				t.Errorf("body is %d bytes, the size says %d: %s", buf.Len(), size, buf.Bytes())
			}
		}
		f.Close()
		var body struct {
			Requests []struct {
				CustomID string          `json:"custom_id"`
				Params   json.RawMessage `json:"params"`
			} `json:"requests"`
		}
		if err := json.Unmarshal(buf.Bytes(), &body); err != nil || len(body.Requests) != len(reqs) {
			t.Fatalf("body %s: %v", buf.Bytes(), err)
		}
		for i, r := range body.Requests {
			if id, ok := requestID(r.CustomID); !ok || id != reqs[i].ID {
				t.Errorf("custom_id %q does not map back to %d", r.CustomID, reqs[i].ID)
			}
			if !bytes.Equal(r.Params, reqs[i].Params) {
				t.Errorf("params %s, stored %s", r.Params, reqs[i].Params)
			}
		}
	}
	if _, ok := requestID("x12"); ok {
		t.Error("a foreign custom_id mapped to a request")
	}
}

func TestResultOutcome(t *testing.T) {
	t.Parallel()
	c := store.ClaimedRequest{ID: 3, BatchSeq: 2, CustomID: "mine", Attempt: 1}
	for raw, want := range map[string]string{
		`{"type":"succeeded","message":{"id":"m", "type":"message"}}`:                                      `{"type":"succeeded","message":{"id":"m","type":"message"}}`,
		`{"type":"errored","error":{"type":"error","error":{"type":"x","message":"y"},"request_id":null}}`: `{"type":"errored","error":{"type":"error","error":{"type":"x","message":"y"},"request_id":null}}`,
		`{"type":"canceled"}`: "",
		`{"type":"expired"}`:  "",
	} {
		o := resultOutcome(c, json.RawMessage(raw))
		if string(o.Result) != want || o.CustomID != "mine" || o.Attempt != 1 || o.RequestID != 3 {
			t.Errorf("%s: %+v", raw, o)
		}
	}
	if o := resultOutcome(c, json.RawMessage(`{"type":"weird"}`)); o.ResultType != store.ResultErrored {
		t.Errorf("unknown type: %+v", o)
	}
}
