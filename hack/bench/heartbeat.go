package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// heartbeatBody is what each heartbeat carries, as existing agents send it.
const heartbeatBody = `{"status":"healthy","metadata":{"cpu_percent":12.5,"memory_mb":256,"tasks_running":1}}`

// heartbeatPath is the name the heartbeat load is reported under.
const heartbeatPath = "POST /agents/{id}/heartbeat"

// heartbeatRun is the outcome of the heartbeat measurement.
type heartbeatRun struct {
	endpoint        endpoint
	together, alone map[string][][2]result
	rss             [2]int // peak RSS (kB) of bare and orchestrator after the load
	register        time.Duration
}

// heartbeats registers o.agents agents with the orchestrator (servers[1]),
// then loads both servers with heartbeats cycling over those agents' IDs,
// side by side and alone, as the probes are.
func heartbeats(ctx context.Context, servers [2]*server, dir string, o options) (heartbeatRun, error) {
	var run heartbeatRun
	progress(fmt.Sprintf("registering %d agents with the orchestrator", o.agents))
	begin := time.Now()
	ids, err := registerAgents(ctx, servers[1], o.agents)
	if err != nil {
		return run, err
	}
	run.register = time.Since(begin)
	script := filepath.Join(dir, "heartbeat.lua")
	if err := os.WriteFile(script, heartbeatScript(ids), 0o600); err != nil {
		return run, err
	}
	run.endpoint = endpoint{path: heartbeatPath, script: script}
	if err := preflightHeartbeat(servers, [2]string{ids[len(ids)-1], ids[len(ids)-1]}); err != nil {
		return run, err
	}
	run.together, run.alone, err = throughputRounds(ctx, servers, []endpoint{run.endpoint}, o.heartbeatRounds, o.heartbeatAlone, o)
	if err != nil {
		return run, err
	}
	for i, s := range servers {
		if run.rss[i], err = peakRSS(s.cmd.Process.Pid); err != nil {
			return run, err
		}
	}
	return run, nil
}

// registerAgents registers n agents with s, spread over the four types,
// from a few connections at once, and returns their IDs.
func registerAgents(ctx context.Context, s *server, n int) ([]string, error) {
	types := []orchestrator.AgentType{orchestrator.AgentTypeCost, orchestrator.AgentTypePerformance,
		orchestrator.AgentTypeResource, orchestrator.AgentTypeApplication}
	client, err := orchestrator.NewClient(s.url(""), orchestrator.WithHTTPClient(&http.Client{Timeout: 10 * time.Second}))
	if err != nil {
		return nil, err
	}
	defer client.CloseIdleConnections()
	ids := make([]string, n)
	next := make(chan int)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			for i := range next {
				if errs[w] != nil {
					continue
				}
				reply, err := client.Register(ctx, orchestrator.Registration{
					Name: fmt.Sprintf("bench-agent-%05d", i), Type: types[i%len(types)],
					Host: "127.0.0.1", Port: 9000 + i%1000,
					Capabilities: []string{"analyze", fmt.Sprintf("task-%02d", i%20)},
					Version:      "1.0.0", Metadata: map[string]any{"zone": "bench"},
				})
				switch {
				case err != nil:
					errs[w] = fmt.Errorf("registering agent %d: %w", i, err)
				case reply.AgentID == "":
					errs[w] = fmt.Errorf("registering agent %d: no agent_id in %+v", i, reply)
				default:
					ids[i] = reply.AgentID
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	seen := make(map[string]bool, n)
	for _, id := range ids {
		if seen[id] {
			return nil, fmt.Errorf("registering agents: ID %s given twice", id)
		}
		seen[id] = true
	}
	return ids, nil
}

// heartbeatScript is a wrk script that POSTs heartbeats cycling over ids,
// with every request built once at start, so that wrk spends as little as
// it can per request.
func heartbeatScript(ids []string) []byte {
	var b bytes.Buffer
	b.WriteString("-- Written by hack/bench: heartbeats cycling over the registered agents.\nlocal ids = {\n")
	for _, id := range ids {
		fmt.Fprintf(&b, "%q,\n", id)
	}
	fmt.Fprintf(&b, `}
local requests, i = {}, 0
function init(args)
  local headers = {["Content-Type"] = "application/json"}
  for k, id in ipairs(ids) do
    requests[k] = wrk.format("POST", "/agents/" .. id .. "/heartbeat", headers, %q)
  end
end
function request()
  i = i %% #requests + 1
  return requests[i]
end
`, heartbeatBody)
	return b.Bytes()
}

var timestampField = regexp.MustCompile(`"timestamp":"[^"]*"`)

// preflightHeartbeat checks that both servers answer a heartbeat for their
// agent ids[i] 200 with the same Content-Type and the same body but for
// the time.
func preflightHeartbeat(servers [2]*server, ids [2]string) error {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	var ans [2]answer
	for i, s := range servers {
		a, err := post(context.Background(), client, s.url("/agents/"+ids[i]+"/heartbeat"), []byte(heartbeatBody))
		if err != nil {
			return fmt.Errorf("preflight heartbeat %s: %w", s.name, err)
		}
		if a.status != http.StatusOK {
			return fmt.Errorf("preflight heartbeat: %s answered %d %s", s.name, a.status, a.body)
		}
		a.body = timestampField.ReplaceAllString(a.body, `"timestamp":"T"`)
		ans[i] = a
	}
	if ans[0].contentType != ans[1].contentType {
		return fmt.Errorf("preflight heartbeat: Content-Type %q (%s) != %q (%s)",
			ans[0].contentType, servers[0].name, ans[1].contentType, servers[1].name)
	}
	if ans[0].body != ans[1].body {
		return fmt.Errorf("preflight heartbeat: body %q (%s) != %q (%s)", ans[0].body, servers[0].name, ans[1].body, servers[1].name)
	}
	return nil
}

// post POSTs a JSON body and reads the answer.
func post(ctx context.Context, client *http.Client, url string, body []byte) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header.Get("Content-Type"), strings.TrimSpace(string(data))}, err
}

// reportHeartbeats prints the heartbeat tables and the memory the agents
// took.
func reportHeartbeats(out io.Writer, o options, run heartbeatRun) {
	fmt.Fprintf(out, "\nHeartbeats: %s cycling over %d agents registered beforehand (in %s), body %s;\n",
		heartbeatPath, o.agents, run.register.Round(time.Millisecond), heartbeatBody)
	fmt.Fprintln(out, "the bare server's handler decodes the same body and answers the same 200 JSON. Measured as the probes")
	fmt.Fprintln(out, "are (same wrk settings and CPUs); req/s is heartbeats per second. No target.")
	fmt.Fprintln(out, "\nSide by side:")
	throughputTable(out, []endpoint{run.endpoint}, run.together, nil)
	fmt.Fprintln(out, "\nAlone (information):")
	throughputTable(out, []endpoint{run.endpoint}, run.alone, nil)
	fmt.Fprintf(out, "\nPeak RSS (VmHWM) after the heartbeat load: bare %.1f MiB, orchestrator %.1f MiB with %d agents registered.\n",
		float64(run.rss[0])/1024, float64(run.rss[1])/1024, o.agents)
}
