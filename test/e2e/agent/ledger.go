package main

import (
	"encoding/json"
	"net/http"
	"sync"
)

// ledger records the deliveries of each task_id this agent received: how
// many, and the most that overlapped. The orchestrator delivers a task at
// least once (again after a replica that held it died), but never twice at
// the same time; the e2e suite reads the ledger through GET /deliveries to
// check both. It lives in memory: a restart of the agent forgets it.
type ledger struct {
	mu    sync.Mutex
	tasks map[string]*taskDeliveries
}

// taskDeliveries is one task's entry in GET /deliveries.
type taskDeliveries struct {
	Deliveries    int `json:"deliveries"`
	InFlight      int `json:"in_flight"`
	MaxConcurrent int `json:"max_concurrent"`
}

func newLedger() *ledger { return &ledger{tasks: map[string]*taskDeliveries{}} }

// begin records the start of a delivery of id; call the function it
// returns when the delivery ends.
func (l *ledger) begin(id string) (end func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.tasks[id]
	if d == nil {
		d = &taskDeliveries{}
		l.tasks[id] = d
	}
	d.Deliveries++
	d.InFlight++
	d.MaxConcurrent = max(d.MaxConcurrent, d.InFlight)
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		d.InFlight--
	}
}

// ServeHTTP answers GET /deliveries: {"tasks":{"<task_id>":{"deliveries","in_flight","max_concurrent"}}}.
func (l *ledger) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	l.mu.Lock()
	data, err := json.Marshal(map[string]any{"tasks": l.tasks})
	l.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(data)
}
