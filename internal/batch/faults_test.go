package batch_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/faultstore"
	"github.com/batchd/batchd/internal/store/sqlite"
)

func newFaultService(t *testing.T) (*batch.Service, *faultstore.Store) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "batchd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	fs := faultstore.New(st)
	return batch.NewService(fs, batch.Config{}), fs
}

func body(n int) string {
	var b strings.Builder
	b.WriteString(`{"requests":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"custom_id":"r%d","params":{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}}`, i)
	}
	b.WriteString(`]}`)
	return b.String()
}

// visible lists the workspace's batches through the wrapped store, so a
// fault set for the test cannot hide them.
func visible(t *testing.T, fs *faultstore.Store) []string {
	t.Helper()
	page, err := fs.Store.BatchList(context.Background(), store.BatchListParams{Workspace: "w", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range page.Batches {
		ids = append(ids, b.ID)
	}
	return ids
}

// TestCreateAndRetryStoreFaults: whichever store call of a create or a
// retry fails, the caller gets the error (no panic) and no half-made batch
// is left visible; once the store recovers the same call works.
func TestCreateAndRetryStoreFaults(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"create", "retry"} {
		for _, verbs := range [][]string{
			{"BatchInsert"}, {"RequestsInsert"}, {"BatchPublish"}, {"BatchPublish", "BatchDiscard"}, {"RequestsInsert", "BatchDiscard"},
			{"ResultsList"}, {"BatchGet"},
		} {
			if op == "create" && (verbs[0] == "ResultsList" || verbs[0] == "BatchGet") {
				continue
			}
			t.Run(op+"/"+strings.Join(verbs, "+"), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				svc, fs := newFaultService(t)
				var src *store.Batch
				if op == "retry" {
					b, err := svc.Create(ctx, "w", nil, strings.NewReader(body(3)))
					if err != nil {
						t.Fatal(err)
					}
					if _, err := svc.Cancel(ctx, "w", b.ID); err != nil { // settles all three canceled
						t.Fatal(err)
					}
					src = b
				}
				before := visible(t, fs)
				for _, v := range verbs {
					fs.Fail(v, nil)
				}
				var err error
				if op == "create" {
					_, err = svc.Create(ctx, "w", nil, strings.NewReader(body(3)))
				} else {
					_, err = svc.Retry(ctx, "w", src.ID)
				}
				if !errors.Is(err, faultstore.ErrInjected) {
					t.Fatalf("%s with %v failing: %v, want the injected error", op, verbs, err)
				}
				if after := visible(t, fs); len(after) != len(before) {
					t.Fatalf("a failed %s left a batch visible: %v, before %v", op, after, before)
				}
				fs.Clear("")
				if op == "create" {
					_, err = svc.Create(ctx, "w", nil, strings.NewReader(body(3)))
				} else {
					_, err = svc.Retry(ctx, "w", src.ID)
				}
				if err != nil {
					t.Fatalf("%s after the store recovered: %v", op, err)
				}
			})
		}
	}
}

// TestCancelAndDeleteStoreFaults: a failing cancel or delete returns the
// store's error and changes nothing; the same call works afterwards.
func TestCancelAndDeleteStoreFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		op   string
		verb string
	}{
		{"cancel", "BatchCancel"}, {"delete", "BatchDelete"},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			svc, fs := newFaultService(t)
			b, err := svc.Create(ctx, "w", nil, strings.NewReader(body(2)))
			if err != nil {
				t.Fatal(err)
			}
			if tt.op == "delete" {
				if _, err := svc.Cancel(ctx, "w", b.ID); err != nil {
					t.Fatal(err)
				}
			}
			do := func() error {
				if tt.op == "cancel" {
					_, err := svc.Cancel(ctx, "w", b.ID)
					return err
				}
				return svc.Delete(ctx, "w", b.ID)
			}
			fs.Fail(tt.verb, nil)
			if err := do(); !errors.Is(err, faultstore.ErrInjected) {
				t.Fatalf("%s: %v, want the injected error", tt.op, err)
			}
			got, err := fs.Store.BatchGet(ctx, store.BatchGetParams{Workspace: "w", ID: b.ID})
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]string{"cancel": store.StatusInProgress, "delete": store.StatusEnded}[tt.op]; got.Status != want {
				t.Fatalf("after a failed %s the batch is %s, want %s", tt.op, got.Status, want)
			}
			fs.Clear("")
			if err := do(); err != nil {
				t.Fatalf("%s after the store recovered: %v", tt.op, err)
			}
		})
	}
}

// insertSizes records the params bytes of every RequestsInsert call.
type insertSizes struct {
	store.Store
	sizes []int
}

func (s *insertSizes) RequestsInsert(ctx context.Context, p store.RequestsInsertParams) error {
	n := 0
	for _, r := range p.Requests {
		n += len(r.Params)
	}
	s.sizes = append(s.sizes, n)
	return s.Store.RequestsInsert(ctx, p)
}

// TestRetryCopiesInGroupsBoundedByBytes: a retry of big requests copies
// them in groups of about 4 MiB, as a create stores them, not 1,000 at a
// time whatever their size.
func TestRetryCopiesInGroupsBoundedByBytes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "batchd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rec := &insertSizes{Store: st}
	svc := batch.NewService(rec, batch.Config{})
	const n, size = 40, 256 << 10 // 10 MiB of params in all
	big := strings.Repeat("x", size)
	var b strings.Builder
	b.WriteString(`{"requests":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"custom_id":"r%d","params":{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"%s"}]}}`, i, big)
	}
	b.WriteString(`]}`)
	src, err := svc.Create(ctx, "w", nil, strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Cancel(ctx, "w", src.ID); err != nil {
		t.Fatal(err)
	}
	rec.sizes = nil
	retried, err := svc.Retry(ctx, "w", src.ID)
	if err != nil {
		t.Fatal(err)
	}
	if retried.Counts.Processing != n {
		t.Fatalf("retry holds %d requests, want %d", retried.Counts.Processing, n)
	}
	for i, sz := range rec.sizes {
		if sz > 4<<20+size+1024 {
			t.Fatalf("retry group %d holds %d bytes of params (groups of %v)", i, sz, rec.sizes)
		}
	}
}
