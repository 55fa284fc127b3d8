// Package pgtest gives tests an isolated PostgreSQL store: a schema of its
// own in the database named by BATCHD_TEST_DATABASE_URL, dropped when the
// test ends. Without the variable the test is skipped, saying how to run it.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/batchd/batchd/internal/store/postgres"
)

// EnvURL names the variable holding the test database's URL.
const EnvURL = "BATCHD_TEST_DATABASE_URL"

// URL returns the test database's URL, or skips t when none is set.
func URL(t testing.TB) string {
	t.Helper()
	url := os.Getenv(EnvURL)
	if url == "" {
		t.Skip("PostgreSQL tests skipped: set " + EnvURL + " to run them, e.g. " +
			EnvURL + "='postgres://postgres@127.0.0.1:5432/test?sslmode=disable' go test ./internal/store/postgres/...")
	}
	return url
}

// Schema creates a schema with a random name and drops it (with all it
// holds) when t ends, returning its name.
func Schema(t testing.TB) string {
	t.Helper()
	url := URL(t)
	ctx := context.Background()
	var b [8]byte
	rand.Read(b[:])
	name := "batchd_test_" + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to %s: %v", EnvURL, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+name); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("drop schema %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `DROP SCHEMA `+name+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", name, err)
		}
	})
	return name
}

// NewStore opens a migrated store in a fresh schema: every connection of
// its pool has its search_path set to it. The store closes before the
// schema is dropped.
func NewStore(t testing.TB) *postgres.Store {
	t.Helper()
	schema := Schema(t)
	cfg, err := pgxpool.ParseConfig(URL(t))
	if err != nil {
		t.Fatalf("parse %s: %v", EnvURL, err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.MaxConns = 4 // many tests run at once on one server
	st, err := postgres.OpenConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open postgres store: %v", err)
	}
	t.Cleanup(func() { st.Close() }) // runs before the schema's cleanup
	return st
}
