// Package dispatchtest is the contract every dispatch.Store must meet.
// Run it from a test of each implementation:
//
//	func TestMemoryStore(t *testing.T) {
//		dispatchtest.TestStore(t, func(*testing.T) dispatch.Store { return dispatch.NewMemoryStore() })
//	}
//
// newStore is called once per subtest and must return an empty store.
// Times the suite stores are whole seconds in UTC and JSON fields are
// compact, so a store that serializes tasks can pass it unchanged.
package dispatchtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/registry"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(seconds int) time.Time { return t0.Add(time.Duration(seconds) * time.Second) }

// TestStore runs the Store contract against stores made by newStore.
func TestStore(t *testing.T, newStore func(t *testing.T) dispatch.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s dispatch.Store)
	}{
		{"CreateAssignsIncreasingSeq", testCreate},
		{"CreateRejectsDuplicates", testCreateDuplicate},
		{"NotFound", testNotFound},
		{"Update", testUpdate},
		{"FailingUpdateChangesNothing", testFailingUpdate},
		{"TerminalNeverChanges", testTerminal},
		{"UpdateKeepsIDAndSeq", testIdentity},
		{"ListPagination", testListPagination},
		{"ListBounds", testListBounds},
		{"Prune", testPrune},
		{"ReturnedTasksDoNotAlias", testNoAliasing},
		{"CancelledContext", testCancelledContext},
		{"ConcurrentUpdatesLoseNothing", testConcurrentUpdates},
		{"ConcurrentFinishHasOneWinner", testConcurrentFinish},
		{"ConcurrentMixed", testConcurrentMixed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newStore(t))
		})
	}
}

// newTask is a pending task created at the given second after t0.
func newTask(id string, second int) dispatch.Task {
	return dispatch.Task{
		ID:             id,
		TaskType:       "analyze_costs",
		AgentType:      registry.TypeCost,
		Parameters:     json.RawMessage(`{"account":"a-1"}`),
		Priority:       1,
		TimeoutSeconds: 30,
		MaxRetries:     3,
		Metadata:       json.RawMessage(`{"by":"test"}`),
		Status:         dispatch.StatusPending,
		CreatedAt:      at(second),
	}
}

func mustCreate(t *testing.T, s dispatch.Store, task dispatch.Task) dispatch.Task {
	t.Helper()
	created, err := s.Create(context.Background(), task)
	if err != nil {
		t.Fatalf("Create(%s): %v", task.ID, err)
	}
	return created
}

func mustGet(t *testing.T, s dispatch.Store, id string) dispatch.Task {
	t.Helper()
	task, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return task
}

func mustUpdate(t *testing.T, s dispatch.Store, id string, change func(*dispatch.Task)) dispatch.Task {
	t.Helper()
	task, err := s.Update(context.Background(), id, func(t *dispatch.Task) error {
		change(t)
		return nil
	})
	if err != nil {
		t.Fatalf("Update(%s): %v", id, err)
	}
	return task
}

// finish makes a task terminal with the given status at the given second.
func finish(status dispatch.Status, second int) func(*dispatch.Task) {
	return func(t *dispatch.Task) {
		t.Status, t.CompletedAt = status, at(second)
		if status == dispatch.StatusCompleted {
			t.Result = json.RawMessage(`{"saved":1}`)
		} else {
			t.Error = "gave up"
		}
	}
}

var terminal = []dispatch.Status{dispatch.StatusCompleted, dispatch.StatusFailed, dispatch.StatusTimeout, dispatch.StatusCancelled}

// diffTask describes how got differs from want, or returns "".
func diffTask(got, want dispatch.Task) string {
	var d []string
	field := func(name string, g, w any) {
		d = append(d, fmt.Sprintf("%s = %v, want %v", name, g, w))
	}
	scalarsG := []any{got.ID, got.Seq, got.TaskType, got.AgentType, got.PinnedAgentID, got.AgentID, got.Priority,
		got.TimeoutSeconds, got.MaxRetries, got.Status, got.Error, got.RetryCount}
	scalarsW := []any{want.ID, want.Seq, want.TaskType, want.AgentType, want.PinnedAgentID, want.AgentID, want.Priority,
		want.TimeoutSeconds, want.MaxRetries, want.Status, want.Error, want.RetryCount}
	names := []string{"ID", "Seq", "TaskType", "AgentType", "PinnedAgentID", "AgentID", "Priority",
		"TimeoutSeconds", "MaxRetries", "Status", "Error", "RetryCount"}
	for i := range names {
		if scalarsG[i] != scalarsW[i] {
			field(names[i], scalarsG[i], scalarsW[i])
		}
	}
	for _, raw := range []struct {
		name string
		g, w json.RawMessage
	}{{"Parameters", got.Parameters, want.Parameters}, {"Metadata", got.Metadata, want.Metadata}, {"Result", got.Result, want.Result}} {
		if !bytes.Equal(raw.g, raw.w) {
			field(raw.name, string(raw.g), string(raw.w))
		}
	}
	for _, tm := range []struct {
		name string
		g, w time.Time
	}{{"CreatedAt", got.CreatedAt, want.CreatedAt}, {"StartedAt", got.StartedAt, want.StartedAt}, {"CompletedAt", got.CompletedAt, want.CompletedAt}} {
		if !tm.g.Equal(tm.w) {
			field(tm.name, tm.g, tm.w)
		}
	}
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprint(d)
}

func checkTask(t *testing.T, what string, got, want dispatch.Task) {
	t.Helper()
	if d := diffTask(got, want); d != "" {
		t.Errorf("%s: %s", what, d)
	}
}

func taskIDs(tasks []dispatch.Task) []string {
	out := make([]string, len(tasks))
	for i, task := range tasks {
		out[i] = task.ID
	}
	return out
}

func list(t *testing.T, s dispatch.Store, q dispatch.Query) []dispatch.Task {
	t.Helper()
	tasks, err := s.List(context.Background(), q)
	if err != nil {
		t.Fatalf("List(%+v): %v", q, err)
	}
	return tasks
}

func testCreate(t *testing.T, s dispatch.Store) {
	var last uint64
	for i := range 5 {
		in := newTask(fmt.Sprintf("t%d", i), i)
		in.Seq = 1000 // the store's to assign, not the caller's
		created := mustCreate(t, s, in)
		if created.Seq <= last {
			t.Errorf("Create(t%d) Seq = %d, want more than %d", i, created.Seq, last)
		}
		want := in
		want.Seq = created.Seq
		checkTask(t, "Create's result", created, want)
		checkTask(t, "Get after Create", mustGet(t, s, in.ID), want)
		last = created.Seq
	}
	// Seq is never reused, even after every task is gone.
	for i := range 5 {
		mustUpdate(t, s, fmt.Sprintf("t%d", i), finish(dispatch.StatusCompleted, 10))
	}
	if n, err := s.Prune(context.Background(), at(100)); err != nil || n != 5 {
		t.Fatalf("Prune = %d, %v; want 5", n, err)
	}
	if created := mustCreate(t, s, newTask("after-prune", 200)); created.Seq <= last {
		t.Errorf("Seq after pruning everything = %d, want more than %d", created.Seq, last)
	}
}

func testCreateDuplicate(t *testing.T, s dispatch.Store) {
	first := mustCreate(t, s, newTask("t1", 0))
	dup := newTask("t1", 5)
	dup.TaskType = "other" // a valid task but for its id, which is taken
	if _, err := s.Create(context.Background(), dup); !errors.Is(err, dispatch.ErrExists) {
		t.Errorf("Create of a duplicate ID: %v, want ErrExists", err)
	}
	checkTask(t, "task after a duplicate Create", mustGet(t, s, "t1"), first)
	if got := taskIDs(list(t, s, dispatch.Query{Limit: 10})); !slices.Equal(got, []string{"t1"}) {
		t.Errorf("List after a duplicate Create = %v, want [t1]", got)
	}
	next := mustCreate(t, s, newTask("t2", 1))
	if next.Seq <= first.Seq {
		t.Errorf("Seq after a refused Create = %d, want more than %d", next.Seq, first.Seq)
	}
}

func testNotFound(t *testing.T, s dispatch.Store) {
	ctx := context.Background()
	mustCreate(t, s, newTask("t1", 0))
	for _, id := range []string{"nope", "", "T1"} {
		if _, err := s.Get(ctx, id); !errors.Is(err, dispatch.ErrNotFound) {
			t.Errorf("Get(%q) = %v, want ErrNotFound", id, err)
		}
		called := false
		_, err := s.Update(ctx, id, func(*dispatch.Task) error { called = true; return nil })
		if !errors.Is(err, dispatch.ErrNotFound) {
			t.Errorf("Update(%q) = %v, want ErrNotFound", id, err)
		}
		if called {
			t.Errorf("Update(%q) called the change for an unknown task", id)
		}
	}
}

func testUpdate(t *testing.T, s dispatch.Store) {
	created := mustCreate(t, s, newTask("t1", 0))
	other := mustCreate(t, s, newTask("t2", 1))
	var seen dispatch.Task
	got := mustUpdate(t, s, "t1", func(task *dispatch.Task) {
		seen = *task
		task.Status, task.AgentID, task.StartedAt = dispatch.StatusDispatched, "agent-1", at(5)
	})
	checkTask(t, "the task the change saw", seen, created)
	want := created
	want.Status, want.AgentID, want.StartedAt = dispatch.StatusDispatched, "agent-1", at(5)
	checkTask(t, "Update's result", got, want)
	checkTask(t, "Get after Update", mustGet(t, s, "t1"), want)

	// The next change sees the last one's result.
	got = mustUpdate(t, s, "t1", func(task *dispatch.Task) {
		seen = *task
		task.Status, task.RetryCount, task.Error = dispatch.StatusRetrying, task.RetryCount+1, "503"
	})
	checkTask(t, "the task the second change saw", seen, want)
	want.Status, want.RetryCount, want.Error = dispatch.StatusRetrying, 1, "503"
	checkTask(t, "second Update's result", got, want)
	checkTask(t, "Get after the second Update", mustGet(t, s, "t1"), want)
	checkTask(t, "the other task", mustGet(t, s, "t2"), other)
	// Status changes show in List's filter.
	if got := taskIDs(list(t, s, dispatch.Query{Status: dispatch.StatusRetrying, Limit: 10})); !slices.Equal(got, []string{"t1"}) {
		t.Errorf("List(retrying) = %v, want [t1]", got)
	}
	if got := taskIDs(list(t, s, dispatch.Query{Status: dispatch.StatusPending, Limit: 10})); !slices.Equal(got, []string{"t2"}) {
		t.Errorf("List(pending) = %v, want [t2]", got)
	}
}

func testFailingUpdate(t *testing.T, s dispatch.Store) {
	created := mustCreate(t, s, newTask("t1", 0))
	boom := errors.New("boom")
	_, err := s.Update(context.Background(), "t1", func(task *dispatch.Task) error {
		task.Status, task.AgentID, task.RetryCount = dispatch.StatusCompleted, "agent-9", 7
		task.CompletedAt, task.Result = at(9), json.RawMessage(`"half"`)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("Update with a failing change = %v, want the change's error", err)
	}
	checkTask(t, "task after a failing change", mustGet(t, s, "t1"), created)
	if got := taskIDs(list(t, s, dispatch.Query{Status: dispatch.StatusCompleted, Limit: 10})); len(got) != 0 {
		t.Errorf("List(completed) after a failing change = %v, want none", got)
	}
	// Not terminal after all: it can still change.
	mustUpdate(t, s, "t1", func(task *dispatch.Task) { task.Status = dispatch.StatusDispatched })
}

func testTerminal(t *testing.T, s dispatch.Store) {
	ctx := context.Background()
	for i, status := range terminal {
		id := "t-" + string(status)
		mustCreate(t, s, newTask(id, i))
		final := mustUpdate(t, s, id, finish(status, 10))
		if final.Status != status {
			t.Fatalf("Update to %s = %s", status, final.Status)
		}
		for _, change := range []func(*dispatch.Task){
			func(task *dispatch.Task) { task.Status = dispatch.StatusPending },
			func(task *dispatch.Task) { task.Status = dispatch.StatusDispatched; task.AgentID = "late" },
			func(task *dispatch.Task) { task.Result = json.RawMessage(`"late reply"`) },
			finish(dispatch.StatusCompleted, 20),
			finish(dispatch.StatusCancelled, 20),
			func(*dispatch.Task) {}, // even a change that changes nothing
		} {
			if _, err := s.Update(ctx, id, func(task *dispatch.Task) error { change(task); return nil }); !errors.Is(err, dispatch.ErrFinished) {
				t.Errorf("Update of a %s task = %v, want ErrFinished", status, err)
			}
			checkTask(t, "a "+string(status)+" task after a refused Update", mustGet(t, s, id), final)
		}
		// A failing change on a finished task still reports ErrFinished.
		if _, err := s.Update(ctx, id, func(*dispatch.Task) error { return errors.New("boom") }); !errors.Is(err, dispatch.ErrFinished) {
			t.Errorf("failing Update of a %s task = %v, want ErrFinished", status, err)
		}
	}
	// Created terminal, it is terminal too.
	born := newTask("born-cancelled", 30)
	born.Status, born.CompletedAt = dispatch.StatusCancelled, at(30)
	created := mustCreate(t, s, born)
	if _, err := s.Update(ctx, born.ID, func(task *dispatch.Task) error { task.Status = dispatch.StatusPending; return nil }); !errors.Is(err, dispatch.ErrFinished) {
		t.Errorf("Update of a task created cancelled = %v, want ErrFinished", err)
	}
	checkTask(t, "task created cancelled", mustGet(t, s, born.ID), created)
}

func testIdentity(t *testing.T, s dispatch.Store) {
	a := mustCreate(t, s, newTask("a", 0))
	b := mustCreate(t, s, newTask("b", 1))
	got := mustUpdate(t, s, "a", func(task *dispatch.Task) {
		task.ID, task.Seq, task.AgentID = "b", b.Seq+100, "agent-1"
	})
	if got.ID != "a" || got.Seq != a.Seq || got.AgentID != "agent-1" {
		t.Errorf("Update changing ID and Seq = %s #%d %s; want a #%d with the other change", got.ID, got.Seq, got.AgentID, a.Seq)
	}
	want := a
	want.AgentID = "agent-1"
	checkTask(t, "Get(a) after an Update that tried to rename it", mustGet(t, s, "a"), want)
	checkTask(t, "b, whose ID the change used", mustGet(t, s, "b"), b)
	all := list(t, s, dispatch.Query{Limit: 10})
	if !slices.Equal(taskIDs(all), []string{"a", "b"}) || all[0].Seq != a.Seq || all[1].Seq != b.Seq {
		t.Errorf("List after the rename attempt = %v", all)
	}
	if got := list(t, s, dispatch.Query{After: a.Seq, Limit: 10}); !slices.Equal(taskIDs(got), []string{"b"}) {
		t.Errorf("List after a = %v, want [b]", taskIDs(got))
	}
}

// statusOf is the status the pagination test gives task i.
func statusOf(i int) dispatch.Status {
	switch {
	case i%5 == 0:
		return dispatch.StatusCompleted
	case i%3 == 0:
		return dispatch.StatusFailed
	case i%7 == 1:
		return dispatch.StatusDispatched
	}
	return dispatch.StatusPending
}

func testListPagination(t *testing.T, s dispatch.Store) {
	const total = 23
	var all []dispatch.Task
	for i := range total {
		mustCreate(t, s, newTask(fmt.Sprintf("t%02d", i), i))
		all = append(all, mustUpdate(t, s, fmt.Sprintf("t%02d", i), func(task *dispatch.Task) {
			task.Status = statusOf(i)
			if task.Status.Terminal() {
				task.CompletedAt = at(100 + i)
			}
		}))
	}
	for _, status := range append([]dispatch.Status{""}, dispatch.Statuses...) {
		var want []dispatch.Task
		for _, task := range all {
			if status == "" || task.Status == status {
				want = append(want, task)
			}
		}
		for limit := 1; limit <= total+1; limit++ {
			var got []dispatch.Task
			after := uint64(0)
			for pages := 0; ; pages++ {
				if pages > total+1 {
					t.Fatalf("status %q limit %d: paging does not end", status, limit)
				}
				page := list(t, s, dispatch.Query{Status: status, After: after, Limit: limit})
				if len(page) > limit {
					t.Fatalf("status %q limit %d: a page of %d", status, limit, len(page))
				}
				for _, task := range page {
					if status != "" && task.Status != status {
						t.Errorf("status %q: List returned %s, %s", status, task.ID, task.Status)
					}
					if task.Seq <= after {
						t.Errorf("status %q limit %d: %s #%d not after the cursor %d", status, limit, task.ID, task.Seq, after)
					}
					after = task.Seq
				}
				got = append(got, page...)
				if len(page) < limit {
					break
				}
			}
			if !slices.Equal(taskIDs(got), taskIDs(want)) {
				t.Errorf("status %q limit %d: pages visit %v, want %v (each once, oldest first)", status, limit, taskIDs(got), taskIDs(want))
			}
		}
		for _, task := range list(t, s, dispatch.Query{Status: status, Limit: total}) {
			checkTask(t, "List's "+task.ID, task, mustGet(t, s, task.ID))
		}
	}
}

func testListBounds(t *testing.T, s dispatch.Store) {
	if got := list(t, s, dispatch.Query{Limit: 10}); len(got) != 0 {
		t.Errorf("List of an empty store = %v", taskIDs(got))
	}
	var last uint64
	for i := range 3 {
		last = mustCreate(t, s, newTask(fmt.Sprintf("t%d", i), i)).Seq
	}
	for _, after := range []uint64{last, last + 1, math.MaxUint64 - 1, math.MaxUint64} {
		if got := list(t, s, dispatch.Query{After: after, Limit: 10}); len(got) != 0 {
			t.Errorf("List(after %d, past the last Seq %d) = %v, want none", after, last, taskIDs(got))
		}
	}
	if got := list(t, s, dispatch.Query{Limit: 1000}); len(got) != 3 {
		t.Errorf("List(limit 1000) = %v, want all 3", taskIDs(got))
	}
	if got := list(t, s, dispatch.Query{Status: dispatch.StatusCancelled, Limit: 10}); len(got) != 0 {
		t.Errorf("List(cancelled) = %v, want none", taskIDs(got))
	}
}

func testPrune(t *testing.T, s dispatch.Store) {
	ctx := context.Background()
	cutoff := at(1000)
	type spec struct {
		id        string
		status    dispatch.Status
		completed time.Time
		pruned    bool
	}
	specs := []spec{
		{"old-completed", dispatch.StatusCompleted, at(10), true},
		{"pending", dispatch.StatusPending, time.Time{}, false},
		{"old-failed", dispatch.StatusFailed, at(999), true},
		{"at-cutoff", dispatch.StatusTimeout, cutoff, false},
		{"dispatched", dispatch.StatusDispatched, time.Time{}, false},
		{"new-cancelled", dispatch.StatusCancelled, at(2000), false},
		{"old-timeout", dispatch.StatusTimeout, at(500), true},
		{"retrying", dispatch.StatusRetrying, time.Time{}, false},
		{"new-completed", dispatch.StatusCompleted, at(1001), false},
		{"old-cancelled", dispatch.StatusCancelled, at(0), true},
	}
	seqs := map[string]uint64{}
	for i, sp := range specs {
		seqs[sp.id] = mustCreate(t, s, newTask(sp.id, i)).Seq
		mustUpdate(t, s, sp.id, func(task *dispatch.Task) { task.Status, task.CompletedAt = sp.status, sp.completed })
	}
	n, err := s.Prune(ctx, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, sp := range specs {
		_, err := s.Get(ctx, sp.id)
		switch {
		case sp.pruned && !errors.Is(err, dispatch.ErrNotFound):
			t.Errorf("Get(%s) after Prune = %v, want ErrNotFound", sp.id, err)
		case !sp.pruned && err != nil:
			t.Errorf("Get(%s) after Prune = %v, want it kept", sp.id, err)
		}
		if !sp.pruned {
			kept = append(kept, sp.id)
		}
	}
	if n != len(specs)-len(kept) {
		t.Errorf("Prune = %d, want %d", n, len(specs)-len(kept))
	}
	if got := taskIDs(list(t, s, dispatch.Query{Limit: 100})); !slices.Equal(got, kept) {
		t.Errorf("List after Prune = %v, want %v", got, kept)
	}
	for _, status := range dispatch.Statuses {
		for _, task := range list(t, s, dispatch.Query{Status: status, Limit: 100}) {
			if _, err := s.Get(ctx, task.ID); err != nil {
				t.Errorf("List(%s) shows %s, which Get does not find: %v", status, task.ID, err)
			}
		}
	}
	// A cursor on a pruned task still pages on from there.
	if got := taskIDs(list(t, s, dispatch.Query{After: seqs["old-failed"], Limit: 100})); !slices.Equal(got, []string{"at-cutoff", "dispatched", "new-cancelled", "retrying", "new-completed"}) {
		t.Errorf("List after a pruned task = %v", got)
	}
	if got := taskIDs(list(t, s, dispatch.Query{After: seqs["old-cancelled"], Limit: 100})); len(got) != 0 {
		t.Errorf("List after the last, pruned, task = %v, want none", got)
	}
	if n, err := s.Prune(ctx, cutoff); err != nil || n != 0 {
		t.Errorf("second Prune = %d, %v; want 0", n, err)
	}
	// Pruned IDs are free again; kept ones are not.
	if _, err := s.Create(ctx, newTask("old-completed", 3000)); err != nil {
		t.Errorf("Create with a pruned ID: %v", err)
	}
	if _, err := s.Create(ctx, newTask("pending", 3000)); err == nil {
		t.Error("Create with a kept ID succeeded")
	}
}

// testNoAliasing: changing a returned task, or what Create was given,
// changes nothing stored.
func testNoAliasing(t *testing.T, s dispatch.Store) {
	in := newTask("t1", 0)
	created := mustCreate(t, s, in)
	want := created
	in.Status, in.AgentID = dispatch.StatusCompleted, "x"
	created.Status, created.Priority = dispatch.StatusFailed, 99
	got := mustGet(t, s, "t1")
	checkTask(t, "after changing Create's argument and result", got, want)
	got.Status, got.RetryCount = dispatch.StatusTimeout, 5
	checkTask(t, "after changing Get's result", mustGet(t, s, "t1"), want)
	for _, l := range list(t, s, dispatch.Query{Limit: 10}) {
		l.Status, l.Error = dispatch.StatusCancelled, "x"
	}
	checkTask(t, "after changing List's result", mustGet(t, s, "t1"), want)
	updated := mustUpdate(t, s, "t1", func(task *dispatch.Task) { task.AgentID = "agent-1" })
	want.AgentID = "agent-1"
	updated.AgentID = "changed"
	checkTask(t, "after changing Update's result", mustGet(t, s, "t1"), want)
	// A pointer the change kept is not the stored task.
	var kept *dispatch.Task
	mustUpdate(t, s, "t1", func(task *dispatch.Task) { kept = task; task.RetryCount = 1 })
	want.RetryCount = 1
	kept.RetryCount, kept.Status = 42, dispatch.StatusCompleted
	checkTask(t, "after changing through a pointer the change kept", mustGet(t, s, "t1"), want)
}

func testCancelledContext(t *testing.T, s dispatch.Store) {
	mustCreate(t, s, newTask("t1", 0))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	checks := map[string]error{}
	_, checks["Create"] = s.Create(ctx, newTask("t2", 1))
	_, checks["Get"] = s.Get(ctx, "t1")
	_, checks["Update"] = s.Update(ctx, "t1", func(task *dispatch.Task) error { task.AgentID = "x"; return nil })
	_, checks["List"] = s.List(ctx, dispatch.Query{Limit: 10})
	_, checks["Prune"] = s.Prune(ctx, at(100))
	for name, err := range checks {
		if err == nil {
			t.Errorf("%s with a cancelled context succeeded", name)
		}
	}
}

func testConcurrentUpdates(t *testing.T, s dispatch.Store) {
	const workers, each = 32, 50
	mustCreate(t, s, newTask("counter", 0))
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.Update(context.Background(), "counter", func(task *dispatch.Task) error {
					task.RetryCount++
					return nil
				}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := mustGet(t, s, "counter").RetryCount; got != workers*each {
		t.Errorf("after %d concurrent increments the counter is %d", workers*each, got)
	}
}

func testConcurrentFinish(t *testing.T, s dispatch.Store) {
	for round := range 20 {
		id := fmt.Sprintf("t%d", round)
		mustCreate(t, s, newTask(id, round))
		var wg sync.WaitGroup
		results := make([]error, len(terminal)*4)
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, results[i] = s.Update(context.Background(), id, func(task *dispatch.Task) error {
					finish(terminal[i%len(terminal)], 10+i)(task)
					return nil
				})
			}()
		}
		wg.Wait()
		winners := 0
		var winner int
		for i, err := range results {
			switch {
			case err == nil:
				winners++
				winner = i
			case !errors.Is(err, dispatch.ErrFinished):
				t.Errorf("Update: %v", err)
			}
		}
		if winners != 1 {
			t.Fatalf("%d updates finished the same task, want exactly 1", winners)
		}
		got := mustGet(t, s, id)
		if got.Status != terminal[winner%len(terminal)] || !got.CompletedAt.Equal(at(10+winner)) {
			t.Errorf("task is %s completed %v, want the winner's %s %v", got.Status, got.CompletedAt, terminal[winner%len(terminal)], at(10+winner))
		}
	}
}

// testConcurrentMixed runs every method at once (for the race detector),
// then checks that List and Get agree.
func testConcurrentMixed(t *testing.T, s dispatch.Store) {
	const workers, each = 8, 100
	var wg sync.WaitGroup
	errs := make(chan error, workers*4)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := range each {
				id := fmt.Sprintf("w%d-%d", w, i)
				if _, err := s.Create(ctx, newTask(id, i)); err != nil {
					fail(err)
					return
				}
				if _, err := s.Update(ctx, id, func(task *dispatch.Task) error {
					finish(terminal[i%len(terminal)], i)(task)
					return nil
				}); err != nil {
					fail(err)
				}
				if _, err := s.Get(ctx, fmt.Sprintf("w%d-%d", (w+1)%workers, i)); err != nil && !errors.Is(err, dispatch.ErrNotFound) {
					fail(err)
				}
				page, err := s.List(ctx, dispatch.Query{After: uint64(i), Limit: 10})
				if err != nil {
					fail(err)
				}
				for j := 1; j < len(page); j++ {
					if page[j].Seq <= page[j-1].Seq {
						fail(fmt.Errorf("list out of order: #%d then #%d", page[j-1].Seq, page[j].Seq))
					}
				}
				if i%10 == 0 {
					if _, err := s.Prune(ctx, at(i-20)); err != nil {
						fail(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	all := list(t, s, dispatch.Query{Limit: workers * each})
	seen := map[string]bool{}
	for j, task := range all {
		if seen[task.ID] {
			t.Errorf("List has %s twice", task.ID)
		}
		seen[task.ID] = true
		if j > 0 && task.Seq <= all[j-1].Seq {
			t.Errorf("List out of order at %s", task.ID)
		}
		checkTask(t, "Get vs List of "+task.ID, mustGet(t, s, task.ID), task)
		if !task.Status.Terminal() {
			t.Errorf("%s is %s, want terminal", task.ID, task.Status)
		}
	}
	// Every task not listed was pruned: old enough.
	for w := range workers {
		for i := range each {
			id := fmt.Sprintf("w%d-%d", w, i)
			if _, err := s.Get(context.Background(), id); errors.Is(err, dispatch.ErrNotFound) && i >= each-20 {
				t.Errorf("%s (completed at %ds) was pruned, but no Prune cutoff passed it", id, i)
			} else if err == nil && !seen[id] {
				t.Errorf("Get finds %s, which List does not show", id)
			}
		}
	}
}
