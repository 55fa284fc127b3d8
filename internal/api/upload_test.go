package api

import "testing"

// TestCreateSlotsCapPerWorkspace: a workspace holds at most max uploading
// creates; another workspace is not affected; a release frees a slot.
func TestCreateSlotsCapPerWorkspace(t *testing.T) {
	t.Parallel()
	c := &createSlots{max: 2, n: map[string]int{}}
	for i := range 2 {
		if !c.acquire("a") {
			t.Fatalf("create %d of a was refused", i+1)
		}
	}
	if c.acquire("a") {
		t.Fatal("a third concurrent create of a was allowed")
	}
	if !c.acquire("b") {
		t.Fatal("workspace b was refused because of a")
	}
	c.release("a")
	if !c.acquire("a") {
		t.Fatal("a released slot was not reusable")
	}
}
