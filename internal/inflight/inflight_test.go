package inflight

import (
	"sync"
	"testing"
	"time"
)

func TestTracker(t *testing.T) {
	var tr Tracker
	if got := tr.Snapshot(); len(got) != 0 {
		t.Fatalf("zero Tracker snapshot = %v, want empty", got)
	}
	t0 := time.Now()
	late := tr.Begin(Request{RequestID: "late", Started: t0.Add(time.Second)})
	early := tr.Begin(Request{RequestID: "early", Started: t0})
	if late == early {
		t.Fatal("Begin returned the same token twice")
	}
	snap := tr.Snapshot()
	if len(snap) != 2 || snap[0].RequestID != "early" || snap[1].RequestID != "late" {
		t.Fatalf("snapshot = %+v, want early then late", snap)
	}
	tr.End(early)
	tr.End(early) // ending twice is harmless
	if snap := tr.Snapshot(); len(snap) != 1 || snap[0].RequestID != "late" {
		t.Fatalf("after End(early) snapshot = %+v", snap)
	}
}

func TestTrackerConcurrent(t *testing.T) {
	var tr Tracker
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				tr.End(tr.Begin(Request{Method: "GET"}))
				_ = tr.Snapshot()
			}
		})
	}
	wg.Wait()
	if n := len(tr.Snapshot()); n != 0 {
		t.Fatalf("%d requests left in flight after every End", n)
	}
}
