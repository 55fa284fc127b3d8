package dispatch

import (
	"testing"

	"github.com/batchd/batchd/internal/store"
)

func TestFairQueueTakesBatchesInTurn(t *testing.T) {
	t.Parallel()
	q := newFairQueue()
	for i := range 5 {
		q.push(job{ClaimedRequest: store.ClaimedRequest{ID: int64(i), BatchSeq: 1}})
	}
	q.push(job{ClaimedRequest: store.ClaimedRequest{ID: 100, BatchSeq: 2}})
	q.push(job{ClaimedRequest: store.ClaimedRequest{ID: 101, BatchSeq: 2}})
	var got []int64
	for range 7 {
		j, ok := q.pop()
		if !ok {
			t.Fatal("queue closed early")
		}
		got = append(got, j.ID)
	}
	// The big batch arrived first, but the small one's requests are not
	// left behind all five of it.
	want := []int64{0, 100, 1, 101, 2, 3, 4}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("pop order %v, want %v", got, want)
		}
	}
}

func TestFairQueueCloseDrainsThenStops(t *testing.T) {
	t.Parallel()
	q := newFairQueue()
	q.push(job{ClaimedRequest: store.ClaimedRequest{ID: 1, BatchSeq: 1}})
	done := make(chan []int64)
	go func() {
		var ids []int64
		for {
			j, ok := q.pop()
			if !ok {
				done <- ids
				return
			}
			ids = append(ids, j.ID)
		}
	}()
	q.close()
	if ids := <-done; len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("a closed queue must hand out what it holds, then stop: %v", ids)
	}
}
