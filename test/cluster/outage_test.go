package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/eventually"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Phases of the outage test.
const (
	phaseBefore   = iota // PostgreSQL up
	phaseOutage          // from Stop until Start returned
	phaseRecovery        // after Start returned
	phases
)

var phaseNames = [phases]string{"before", "outage", "recovery"}

// outageRecord is what the load saw, by phase.
type outageRecord struct {
	phase atomic.Int32

	mu         sync.Mutex
	accepted   []string               // task IDs answered 201
	codes      [phases]map[string]int // "submit 201", "heartbeat 503"...
	unexpected []string               // anything but success or 503 with Retry-After
	liveFailed []string
	ready      []readiness
}

// readiness is what the probes saw of one replica's /ready.
type readiness struct {
	wentUnready bool // during the outage or after
	cameBack    bool // ready again after that
}

func (o *outageRecord) request(kind string, want int, r result) {
	phase := o.phase.Load()
	o.mu.Lock()
	defer o.mu.Unlock()
	key := kind + " error"
	if r.err == nil {
		key = fmt.Sprintf("%s %d", kind, r.status)
	}
	o.codes[phase][key]++
	switch {
	case r.err != nil:
		o.unexpected = append(o.unexpected, fmt.Sprintf("%s (%s): %v", kind, phaseNames[phase], r.err))
	case r.status == want:
		if kind == "submit" {
			var accepted orchestrator.TaskAccepted
			if err := json.Unmarshal(r.body, &accepted); err != nil || accepted.TaskID == "" {
				o.unexpected = append(o.unexpected, fmt.Sprintf("submit (%s): 201 %s", phaseNames[phase], r.body))
				return
			}
			o.accepted = append(o.accepted, accepted.TaskID)
		}
	case r.status == http.StatusServiceUnavailable && r.retryAfter != "":
	default:
		o.unexpected = append(o.unexpected, fmt.Sprintf("%s (%s): %s (Retry-After %q)", kind, phaseNames[phase], r, r.retryAfter))
	}
}

func (o *outageRecord) probe(i int, live, ready result) {
	phase := o.phase.Load()
	o.mu.Lock()
	defer o.mu.Unlock()
	if live.err != nil || live.status != http.StatusOK {
		o.liveFailed = append(o.liveFailed, fmt.Sprintf("replica %d /live (%s): %s", i, phaseNames[phase], live))
	}
	isReady := ready.err == nil && ready.status == http.StatusOK
	switch {
	case phase == phaseBefore:
	case !isReady:
		o.ready[i].wentUnready = true
	case o.ready[i].wentUnready:
		o.ready[i].cameBack = true
	}
}

func (o *outageRecord) snapshot() (accepted int, ready []readiness, codes [phases]map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for p := range codes {
		codes[p] = make(map[string]int, len(o.codes[p]))
		for k, v := range o.codes[p] {
			codes[p][k] = v
		}
	}
	return len(o.accepted), append([]readiness(nil), o.ready...), codes
}

// A PostgreSQL restart under a steady stream of submissions and heartbeats
// costs 503s with Retry-After, never a 500 or a dropped connection; /live
// stays 200, /ready fails and recovers by itself, every accepted task ends
// in exactly one terminal state and the agent stays registered.
func TestDatabaseRestartUnderLoad(t *testing.T) {
	server := pgtest.Start(t, pgtest.Options{}) // this test's own: it stops it
	db := server.NewDatabase(t)
	agent := newFakeAgent(t)
	replicas := []*replica{startReplica(t, "replica A", db), startReplica(t, "replica B", db)}
	hc := newClient(t)
	apis := []*orchestrator.Client{replicas[0].api(t, hc), replicas[1].api(t, hc)}
	id := register(t, apis[0], agent.registration("outage-agent", orchestrator.AgentTypeCost))

	rec := &outageRecord{ready: make([]readiness, len(replicas))}
	for p := range rec.codes {
		rec.codes[p] = map[string]int{}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	every := func(d time.Duration, f func(i int)) {
		wg.Go(func() {
			tick := time.NewTicker(d)
			defer tick.Stop()
			for i := 0; ; i++ {
				f(i)
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		})
	}
	every(40*time.Millisecond, func(i int) {
		r := replicas[i%2]
		rec.request("submit", http.StatusCreated, call(hc, http.MethodPost, r.base+"/tasks", workRequest(orchestrator.AgentTypeCost)))
	})
	every(100*time.Millisecond, func(i int) {
		r := replicas[i%2]
		rec.request("heartbeat", http.StatusOK, call(hc, http.MethodPost, r.base+"/agents/"+id+"/heartbeat", struct{}{}))
	})
	every(100*time.Millisecond, func(int) {
		for i, r := range replicas {
			rec.probe(i, get(probeClient, r.base+"/live"), get(probeClient, r.base+"/ready"))
		}
	})
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopLoad) // before the replicas are killed, on every path
	t.Cleanup(func() {
		if t.Failed() {
			n, ready, codes := rec.snapshot()
			t.Logf("when it failed: %d tasks accepted, readiness %+v, answers by phase %v", n, ready, codes)
		}
	})

	eventually.True(t, 30*time.Second, "10 tasks accepted before the outage", func() bool {
		n, _, _ := rec.snapshot()
		return n >= 10
	})

	rec.phase.Store(phaseOutage)
	server.Stop()
	stopped := time.Now()
	t.Log("PostgreSQL stopped")
	eventually.True(t, 30*time.Second, "both replicas unready, and submissions and heartbeats answered 503", func() bool {
		_, ready, codes := rec.snapshot()
		return ready[0].wentUnready && ready[1].wentUnready &&
			codes[phaseOutage]["submit 503"] > 0 && codes[phaseOutage]["heartbeat 503"] > 0
	})
	t.Logf("both replicas unready %s after the stop", time.Since(stopped).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // a steady outage, not only its edges

	if err := server.Start(); err != nil {
		t.Fatalf("starting PostgreSQL again: %v", err)
	}
	rec.phase.Store(phaseRecovery)
	restarted := time.Now()
	t.Logf("PostgreSQL started again after %s", restarted.Sub(stopped).Round(time.Millisecond))
	acceptedBefore, _, _ := rec.snapshot()
	eventually.True(t, 60*time.Second, "both replicas ready again, and 10 more tasks accepted", func() bool {
		n, ready, _ := rec.snapshot()
		return ready[0].cameBack && ready[1].cameBack && n >= acceptedBefore+10
	})
	t.Logf("both replicas ready again %s after PostgreSQL started", time.Since(restarted).Round(time.Millisecond))
	stopLoad()

	rec.mu.Lock()
	accepted, unexpected, liveFailed, codes := rec.accepted, rec.unexpected, rec.liveFailed, rec.codes
	rec.mu.Unlock()
	for p, name := range phaseNames {
		t.Logf("%-8s %v", name, codes[p])
	}
	for i, u := range unexpected {
		if i == 20 {
			t.Errorf("... and %d more", len(unexpected)-i)
			break
		}
		t.Errorf("want success or 503 with Retry-After, got %s", u)
	}
	for i, f := range liveFailed {
		if i == 20 {
			t.Errorf("... and %d more", len(liveFailed)-i)
			break
		}
		t.Errorf("/live must stay 200: %s", f)
	}
	for _, r := range replicas {
		select {
		case <-r.exited:
			t.Fatalf("%s exited during the outage (%s)", r.name, r.cmd.ProcessState)
		default:
		}
	}

	// Every accepted task ends, and in one terminal state only.
	ctx := context.Background()
	statuses := map[orchestrator.TaskStatus]int{}
	for i, taskID := range accepted {
		api := apis[i%2]
		var task orchestrator.Task
		eventually.True(t, 60*time.Second, "task "+taskID+" to finish", func() bool {
			var err error
			task, err = api.GetTask(ctx, taskID)
			if err != nil {
				t.Fatalf("GET /tasks/%s: %v", taskID, err)
			}
			return task.Status.Terminal()
		})
		statuses[task.Status]++
		if task.Status != orchestrator.TaskCompleted && task.Error == "" {
			t.Errorf("task %s ended %s without an error saying why", taskID, task.Status)
		}
	}
	seen := map[string][]orchestrator.TaskStatus{}
	for _, status := range []orchestrator.TaskStatus{orchestrator.TaskCompleted, orchestrator.TaskFailed,
		orchestrator.TaskTimeout, orchestrator.TaskCancelled, orchestrator.TaskPending, orchestrator.TaskDispatched, orchestrator.TaskRetrying} {
		for _, task := range listTasks(t, apis[1], status) {
			seen[task.TaskID] = append(seen[task.TaskID], status)
		}
	}
	for _, taskID := range accepted {
		if got := seen[taskID]; len(got) != 1 || !got[0].Terminal() {
			t.Errorf("GET /tasks lists task %s under %v, want under exactly one terminal status", taskID, got)
		}
	}
	delivered, answered, redelivered := agent.totals()
	t.Logf("%d tasks accepted, ending %v; the agent got %d deliveries, answered %d, %d tasks delivered more than once",
		len(accepted), statuses, delivered, answered, redelivered)

	for i, api := range apis {
		if a, err := api.GetAgent(ctx, id); err != nil || a.ID != id {
			t.Errorf("GET /agents/%s through %s after the outage: %+v, %v; want the agent, still registered", id, replicas[i].name, a, err)
		}
	}
}

// listTasks reads every page of GET /tasks?status=status.
func listTasks(t *testing.T, api *orchestrator.Client, status orchestrator.TaskStatus) []orchestrator.Task {
	t.Helper()
	var all []orchestrator.Task
	opts := orchestrator.ListTasksOptions{Status: status, Limit: 1000}
	for {
		page, err := api.ListTasks(context.Background(), opts)
		if err != nil {
			t.Fatalf("GET /tasks?status=%s: %v", status, err)
		}
		all = append(all, page.Tasks...)
		if page.NextCursor == "" || len(page.Tasks) == 0 {
			return all
		}
		opts.Cursor = page.NextCursor
	}
}
