package sqlite

import (
	"context"
	"database/sql"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// oldDatabase writes a database file at path as a batchd whose last
// migration was before version left it, then runs fill on it.
func oldDatabase(t *testing.T, path, before string, fill ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	names, _ := fs.Glob(migrations, "migrations/*.sql")
	sort.Strings(names)
	stmts := []string{`CREATE TABLE schema_migrations (version TEXT PRIMARY KEY)`}
	for _, name := range names {
		version := strings.TrimSuffix(strings.TrimPrefix(name, "migrations/"), ".sql")
		if version >= before {
			break
		}
		body, _ := migrations.ReadFile(name)
		stmts = append(stmts, string(body), `INSERT INTO schema_migrations VALUES ('`+version+`')`)
	}
	for _, q := range append(stmts, fill...) {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// An existing database keeps its deliveries and attempts through the
// AUTOINCREMENT rebuild, and ids deleted before it are not handed out again
// when an attempt still names them.
func TestMigrateIDsNeverReused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "batchd.db")
	oldDatabase(t, path, "0008",
		`INSERT INTO webhook_endpoints (id, workspace, url, secret, created_at, updated_at) VALUES ('whep_1', 'w', 'https://a.example/', 's', 0, 0)`,
		`INSERT INTO events (id, workspace, batch_id, type, created_at, data) VALUES ('evt_1', 'w', 'b', 'x', 0, 'null')`,
		`INSERT INTO deliveries (id, event_seq, endpoint_id, next_at, state) VALUES (1, 1, 'whep_1', 0, 2), (2, 1, 'whep_2', 0, 2)`,
		`INSERT INTO delivery_attempts (id, delivery_id, endpoint_id, attempt, at, status) VALUES (1, 1, 'whep_1', 1, 0, 204), (2, 3, 'whep_1', 1, 0, 204)`,
	)
	ctx := context.Background()
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	atts, err := st.DeliveryAttempts(ctx, "w", "whep_1", 10)
	if err != nil || len(atts) != 1 || atts[0].ID != 1 { // attempt 2's delivery is gone: the join drops it
		t.Fatalf("attempts kept: %+v %v", atts, err)
	}
	_, d, err := st.EventTestInsert(ctx, "w", "whep_1", time.Unix(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if d <= 3 {
		t.Fatalf("new delivery id %d reuses one an attempt names (3)", d)
	}
	var n int
	st.r.QueryRow(`SELECT count(*) FROM deliveries`).Scan(&n)
	if n != 3 {
		t.Fatalf("%d deliveries after the migration and one insert, want 3", n)
	}
}
