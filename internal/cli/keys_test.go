package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runKeys runs `batchd keys ARGS` in dir as the working directory's stand-in:
// relative --data-dir values are resolved against dir.
func runKeys(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := NewRootCommand()
	var stdout, stderr bytes.Buffer
	cmd.SetArgs(append([]string{"keys"}, args...))
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	err := cmd.Execute()
	return stdout.String(), stderr.String(), err
}

func TestKeysDataDir(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	fresh := filepath.Join(root, "fresh")

	// list and revoke on a dir without a database refuse, and create nothing.
	for _, args := range [][]string{{"list", "--data-dir", fresh}, {"revoke", "bk_x", "--data-dir", fresh}} {
		_, _, err := runKeys(t, args...)
		if err == nil || !strings.Contains(err.Error(), fresh) || !strings.Contains(err.Error(), "--data-dir") {
			t.Errorf("keys %s on a fresh dir: %v; want a refusal naming the dir and --data-dir", args[0], err)
		}
		if _, statErr := os.Stat(fresh); !os.IsNotExist(statErr) {
			t.Errorf("keys %s created %s", args[0], fresh)
		}
	}

	// create says where the key went, on stderr; stdout is just the key.
	stdout, stderr, err := runKeys(t, "create", "--workspace", "w", "--data-dir", fresh)
	if err != nil {
		t.Fatal(err)
	}
	if key := strings.TrimSpace(stdout); strings.ContainsAny(key, " \n") || key == "" {
		t.Errorf("create stdout = %q, want only the key", stdout)
	}
	if !strings.Contains(stderr, fresh) {
		t.Errorf("create stderr = %q, want the data dir %s", stderr, fresh)
	}
	list, _, err := runKeys(t, "list", "--data-dir", fresh)
	if err != nil || !strings.Contains(list, "\tw\t") && !strings.Contains(list, " w ") {
		t.Errorf("list after create: %q, %v", list, err)
	}
}

func TestKeysDefaultDataDirMatchesServe(t *testing.T) {
	t.Parallel()
	serve := newServeCommand().Flags().Lookup("data-dir").DefValue
	keys := newKeysCommand().PersistentFlags().Lookup("data-dir").DefValue
	if serve != keys {
		t.Errorf("keys --data-dir default %q, serve's %q", keys, serve)
	}
}

// TestDataDirMadePrivate: a data dir that already existed readable by
// others is narrowed to 0700 with a warning naming it, and the database
// made in it is 0600; a private one is left alone without a warning.
func TestDataDirMadePrivate(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		mode     os.FileMode
		wantWarn bool
	}{{0o755, true}, {0o750, true}, {0o700, false}} {
		t.Run(tt.mode.String(), func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "data")
			if err := os.Mkdir(dir, tt.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(dir, tt.mode) // past the umask
			_, stderr, err := runKeys(t, "create", "--workspace", "w", "--data-dir", dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(stderr, "warning") && strings.Contains(stderr, dir); got != tt.wantWarn {
				t.Errorf("stderr = %q; warning naming the dir: %v, want %v", stderr, got, tt.wantWarn)
			}
			for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "batchd.db"): 0o600} {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != want {
					t.Errorf("%s: mode %#o, want %#o", path, fi.Mode().Perm(), want)
				}
			}
		})
	}
}
