package inflight

import (
	"sync"
	"testing"
	"time"
)

func TestTracker(t *testing.T) {
	var tr Tracker
	if got := tr.Snapshot(); len(got) != 0 || tr.Len() != 0 {
		t.Fatalf("zero Tracker: snapshot %v, len %d; want empty", got, tr.Len())
	}
	t0 := time.Now()
	late := &Entry{Request: Request{RequestID: "late", Started: t0.Add(time.Second)}}
	early := &Entry{Request: Request{RequestID: "early", Started: t0}}
	middle := &Entry{Request: Request{RequestID: "middle", Started: t0.Add(time.Millisecond)}}
	tr.Begin(late)
	tr.Begin(early)
	tr.Begin(middle)
	snap := tr.Snapshot()
	if len(snap) != 3 || snap[0].RequestID != "early" || snap[1].RequestID != "middle" || snap[2].RequestID != "late" {
		t.Fatalf("snapshot = %+v, want early, middle, late", snap)
	}
	tr.End(middle)
	tr.End(middle)   // ending twice is harmless
	tr.End(&Entry{}) // so is ending one never begun
	if snap := tr.Snapshot(); len(snap) != 2 || tr.Len() != 2 || snap[0].RequestID != "early" || snap[1].RequestID != "late" {
		t.Fatalf("after End(middle): snapshot %+v, len %d", snap, tr.Len())
	}
	tr.End(early)
	tr.End(late)
	if tr.Len() != 0 || len(tr.Snapshot()) != 0 {
		t.Fatal("entries left after every End")
	}
	tr.Begin(early) // the list is reusable once empty
	if snap := tr.Snapshot(); len(snap) != 1 || snap[0].RequestID != "early" {
		t.Fatalf("after reuse: %+v", snap)
	}
}

func TestTrackerConcurrent(t *testing.T) {
	var tr Tracker
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				e := &Entry{Request: Request{Method: "GET"}}
				tr.Begin(e)
				_ = tr.Snapshot()
				tr.End(e)
			}
		})
	}
	wg.Wait()
	if n := tr.Len(); n != 0 {
		t.Fatalf("%d requests left in flight after every End", n)
	}
}

func TestTrackingDoesNotAllocate(t *testing.T) {
	var tr Tracker
	e := &Entry{}
	if n := testing.AllocsPerRun(100, func() { tr.Begin(e); tr.End(e) }); n != 0 {
		t.Fatalf("Begin and End allocate %v times; they run on every request", n)
	}
}
