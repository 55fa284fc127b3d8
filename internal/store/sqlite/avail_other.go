//go:build !(linux || darwin || freebsd)

package sqlite

// availBytes cannot read the free room here: the callers then take the
// cautious path (see checkpointSafe).
func availBytes(string) (int64, bool) { return 0, false }
