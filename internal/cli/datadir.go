package cli

import (
	"fmt"
	"os"
)

// prepareDataDir makes the data dir if needed and keeps it private: it holds
// every prompt, result and webhook secret, so a dir that already existed
// readable by the group or others is narrowed to 0700, and warn is told
// (the operator may have expected another mode). The files inside are
// made 0600 by the store (storeopen.Open) and by whoever writes them.
func prepareDataDir(dir string, warn func(msg string)) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("data dir %s is readable by others (mode %#o) and cannot be narrowed: %w", absPath(dir), mode, err)
		}
		warn(fmt.Sprintf("data dir %s was readable by others (mode %#o); changed it to 0700", absPath(dir), mode))
	}
	return nil
}
