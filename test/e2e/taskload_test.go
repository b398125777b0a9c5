//go:build e2e

package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// taskStream submits tasks through one URL (the Service) at a steady pace
// from two clients, as load.go's loadClient sends GETs: one opening a
// connection per request, one keeping its connections. Every answer is
// counted against the phase the test was in when the request began, and
// every accepted (201) task is kept for the checks after.
type taskStream struct {
	phases []string
	phase  atomic.Int32

	mu       sync.Mutex
	stats    []phaseStats
	accepted []acceptedTask

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// phaseStats is what the submissions of one phase got.
type phaseStats struct {
	sent, accepted, unavailable, connErrors int
	// other counts the answers that are neither 201 nor 503, by status.
	other map[int]int
	// errors are the first few failures, for the log.
	errors []string
}

type acceptedTask struct {
	id    string
	phase int
}

// taskEvery is each client's pace: 2 x 10 tasks a second, a steady stream
// that does not starve the node it measures. Each task takes taskSleepMS
// at the agent, so about two are in flight, under the default per-agent
// limit (TASK_AGENT_CONCURRENCY=4): they flow rather than queue.
const (
	taskEvery   = 100 * time.Millisecond
	taskSleepMS = 100
)

func startTaskStream(t *testing.T, base, token string, phases []string) *taskStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &taskStream{phases: phases, stats: make([]phaseStats, len(phases)), cancel: cancel}
	for i := range s.stats {
		s.stats[i].other = map[int]int{}
	}
	for _, keepAlive := range []bool{false, true} {
		transport := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 4, Proxy: nil}
		client, err := orchestrator.NewClient(base, orchestrator.WithToken(token),
			orchestrator.WithHTTPClient(&http.Client{Transport: transport, Timeout: 10 * time.Second}))
		if err != nil {
			t.Fatal(err)
		}
		s.wg.Go(func() {
			defer transport.CloseIdleConnections()
			s.run(ctx, client, keepAlive)
		})
	}
	return s
}

// setPhase moves the stream to phase i: requests that begin from now on
// count for it.
func (s *taskStream) setPhase(i int) { s.phase.Store(int32(i)) }

func (s *taskStream) run(ctx context.Context, client *orchestrator.Client, keepAlive bool) {
	pace := time.NewTicker(taskEvery)
	defer pace.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-pace.C:
		}
		phase := int(s.phase.Load())
		created, err := client.SubmitTask(ctx, orchestrator.TaskRequest{
			TaskType:       agentCapability,
			AgentType:      agentType,
			Parameters:     json.RawMessage(fmt.Sprintf(`{"sleep_ms":%d,"keep_alive":%t,"n":%d}`, taskSleepMS, keepAlive, n)),
			TimeoutSeconds: new(10),
		})
		if ctx.Err() != nil {
			return // a request cut short by the end of the stream is not counted
		}
		s.record(phase, created.TaskID, err)
	}
}

func (s *taskStream) record(phase int, id string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.stats[phase]
	st.sent++
	var apiErr *orchestrator.APIError
	switch {
	case err == nil:
		st.accepted++
		s.accepted = append(s.accepted, acceptedTask{id: id, phase: phase})
		return
	case errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusServiceUnavailable:
		st.unavailable++
	case errors.As(err, &apiErr):
		st.other[apiErr.StatusCode]++
	default:
		st.connErrors++
	}
	if len(st.errors) < 5 {
		st.errors = append(st.errors, fmt.Sprintf("%s: %v", time.Now().UTC().Format("15:04:05.000"), err))
	}
}

// add counts a task accepted outside the stream in phase, for the checks
// after.
func (s *taskStream) add(id string, phase int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepted = append(s.accepted, acceptedTask{id: id, phase: phase})
}

// stop ends the stream and returns what it saw.
func (s *taskStream) stop() ([]phaseStats, []acceptedTask) {
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats, s.accepted
}
