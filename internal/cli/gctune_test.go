package cli

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestGCPercentFor(t *testing.T) {
	t.Parallel()
	const mb = 1 << 20
	tests := []struct {
		live uint64
		want int
	}{
		{0, 400},
		{4 * mb, 400},  // tiny: at most 5×
		{16 * mb, 400}, // 64 MiB of room is 4×
		{32 * mb, 200},
		{48 * mb, 133},
		{64 * mb, 100}, // from here on, the default
		{1 << 30, 100},
	}
	for _, tt := range tests {
		if got := gcPercentFor(tt.live, 64*mb); got != tt.want {
			t.Errorf("gcPercentFor(%d MiB) = %d, want %d", tt.live/mb, got, tt.want)
		}
	}
}

// TestTuneGC: after a collection the tuner has raised GOGC for this small
// heap; stopping puts the default back. Not parallel: GOGC is the
// process's.
func TestTuneGC(t *testing.T) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOGC or GOMEMLIMIT is set: batchd leaves the GC as the operator set it")
	}
	stop := tuneGC()
	for i := 0; i < 100; i++ {
		runtime.GC() // the finalizer runs after the cycle, in its goroutine
		if p := debug.SetGCPercent(-1); p > 100 {
			debug.SetGCPercent(p)
			break
		} else {
			debug.SetGCPercent(p)
		}
		runtime.Gosched()
		if i == 99 {
			t.Fatal("GOGC still 100 after 100 collections of a small heap")
		}
	}
	stop()
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("after stop GOGC = %d, want 100", p)
	}
}
