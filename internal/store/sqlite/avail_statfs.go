//go:build linux || darwin || freebsd

package sqlite

import "syscall"

// availBytes is the room the file system holding dir has left for an
// unprivileged writer, and whether it could be read.
func availBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(uint64(st.Bavail) * uint64(st.Bsize)), true
}
