package dispatch

import (
	"fmt"
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

// TestFairQueueTake: take removes whole batches and leaves the turns of the
// others as they were.
func TestFairQueueTake(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		popped int   // jobs popped before take, to move the turn
		take   int64 // the batch taken
		want   []int64
	}{
		{"first batch", 0, 1, []int64{20, 30, 21}},
		{"middle batch", 0, 2, []int64{10, 30, 11}},
		{"batch before the turn", 2, 1, []int64{30, 21}},
		{"batch at the turn", 1, 2, []int64{30, 11}},
		{"last batch", 2, 3, []int64{11, 21}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := newFairQueue()
			for _, id := range []int64{10, 11, 20, 21, 30} {
				q.push(job{ClaimedRequest: store.ClaimedRequest{ID: id, BatchSeq: id / 10}})
			}
			for range tt.popped {
				q.pop()
			}
			var taken []int64
			for _, j := range q.take(func(j job) bool { return j.BatchSeq == tt.take }) {
				if j.BatchSeq != tt.take {
					t.Errorf("took job %d of batch %d", j.ID, j.BatchSeq)
				}
				taken = append(taken, j.ID)
			}
			if len(taken) == 0 {
				t.Error("took nothing")
			}
			q.close()
			var got []int64
			for j, ok := q.pop(); ok; j, ok = q.pop() {
				got = append(got, j.ID)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("after take, pop order %v, want %v", got, tt.want)
			}
		})
	}
}
