// Package testfs gives tests a small file system of their own, so that a
// full disk can be made on purpose rather than hoped for.
package testfs

import (
	"fmt"
	"syscall"
	"testing"
)

// Tmpfs mounts a tmpfs of mib MiB on a fresh directory, unmounted when the
// test ends, or skips the test where this machine cannot (not root, no
// mount privilege).
func Tmpfs(t testing.TB, mib int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%dm,mode=0700", mib)); err != nil {
		t.Skipf("disk-full test needs a small file system: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}
