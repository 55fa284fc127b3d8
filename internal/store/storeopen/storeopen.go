// Package storeopen chooses and opens the store a database URL names, so
// that serve, keys and tests open stores one way and the store package
// stays a leaf that imports no driver.
//
//   - "" is SQLite in the data dir (DATA_DIR/batchd.db), the default;
//   - "sqlite:PATH" or a plain path is SQLite at PATH;
//   - "postgres://…" or "postgresql://…" is PostgreSQL (libpq URL
//     parameters, search_path included, pass through).
package storeopen

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/postgres"
	"github.com/batchd/batchd/internal/store/sqlite"
)

// Drivers a Target names.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

// EnvURL is the environment variable holding the database URL when no
// --database-url flag is given.
const EnvURL = "BATCHD_DATABASE_URL"

// Target is a parsed database URL.
type Target struct {
	Driver string
	// Path is the SQLite database file.
	Path string
	// URL is the PostgreSQL connection URL.
	URL string
}

// Parse reads a database URL; "" means SQLite in dataDir.
func Parse(rawURL, dataDir string) (Target, error) {
	switch {
	case rawURL == "":
		return Target{Driver: SQLite, Path: filepath.Join(dataDir, "batchd.db")}, nil
	case strings.HasPrefix(rawURL, "postgres://"), strings.HasPrefix(rawURL, "postgresql://"):
		return Target{Driver: Postgres, URL: rawURL}, nil
	case strings.HasPrefix(rawURL, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(rawURL, "sqlite:"), "//")
		if path == "" {
			return Target{}, fmt.Errorf("database URL %q: sqlite: needs a path after it", rawURL)
		}
		return Target{Driver: SQLite, Path: path}, nil
	case strings.Contains(rawURL, "://"):
		return Target{}, fmt.Errorf("database URL %q: want sqlite:PATH, a file path, or postgres://…", Redact(rawURL))
	default:
		return Target{Driver: SQLite, Path: rawURL}, nil
	}
}

// Options are driver settings that a URL does not carry.
type Options struct {
	// Reserve is SQLite's disk space reserve (sqlite.Options.Reserve).
	Reserve int64
}

// Open opens and migrates the store t names.
func Open(ctx context.Context, t Target, o Options) (store.Store, error) {
	switch t.Driver {
	case SQLite:
		st, err := sqlite.OpenWith(ctx, t.Path, sqlite.Options{Reserve: o.Reserve})
		if err != nil {
			return nil, err
		}
		return st, nil
	case Postgres:
		st, err := postgres.Open(ctx, t.URL)
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	return nil, fmt.Errorf("open store: unknown driver %q", t.Driver)
}

// String describes t for logs, without a password.
func (t Target) String() string {
	if t.Driver == Postgres {
		return Redact(t.URL)
	}
	return "sqlite:" + t.Path
}

// Redact is a URL with its password masked.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// MigrationStatus reports which schema migrations the store t names has
// applied and which are pending, without applying any (see the drivers'
// MigrationStatus); Open applies the pending ones.
func MigrationStatus(ctx context.Context, t Target) (applied, pending, unknown []string, err error) {
	switch t.Driver {
	case SQLite:
		return sqlite.MigrationStatus(ctx, t.Path)
	case Postgres:
		return postgres.MigrationStatus(ctx, t.URL)
	}
	return nil, nil, nil, fmt.Errorf("migration status: unknown driver %q", t.Driver)
}
