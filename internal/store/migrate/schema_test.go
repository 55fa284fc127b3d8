package migrate

import (
	"strings"
	"testing"
)

// TestSameSchema: a table or column one side lacks stops the copy before
// any row moves, naming it; the column order may differ.
func TestSameSchema(t *testing.T) {
	t.Parallel()
	src := []Table{{Name: "batches", Columns: []string{"seq", "id", "betas"}}}
	for _, tc := range []struct {
		name string
		dst  []Table
		want string
	}{
		{"same", []Table{{Name: "batches", Columns: []string{"id", "seq", "betas"}}, {Name: "extra", Columns: []string{"x"}}}, ""},
		{"missing table", []Table{{Name: "other", Columns: []string{"x"}}}, "no table batches"},
		{"missing column", []Table{{Name: "batches", Columns: []string{"seq", "id"}}}, "table batches: source columns"},
		{"extra column", []Table{{Name: "batches", Columns: []string{"seq", "id", "betas", "new"}}}, "table batches: source columns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := sameSchema(src, tc.dst)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
