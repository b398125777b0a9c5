// Command bench measures the orchestrator against bare references in the
// same run and checks the service's targets:
//
//   - /live and /ready throughput through the full middleware chain is at
//     least 0.90 of the bare server's writing the same status, body and
//     Content-Type; /health is compared with a bare handler writing a fixed
//     JSON body of the same size and shape (ratio reported, no target);
//   - the orchestrator's peak RSS (VmHWM) after that load is at most 20 MiB;
//   - the median time from process start to the first 200 from /ready is at
//     most 20 ms (the p90 is reported too), over 20 starts of each server.
//
// It reports, without a target:
//
//   - heartbeats per second: POST /agents/{id}/heartbeat, cycling over
//     -agents agents registered beforehand, against the bare server's
//     handler decoding the same JSON body and answering the same 200 JSON,
//     measured like the probes (heartbeat.go); and the orchestrator's peak
//     RSS with those agents registered;
//   - task dispatch overhead: one task at a time to a fake agent (the bare
//     server's POST /task), by a direct POST and through the orchestrator's
//     dispatcher and HTTP API run in this process, the difference and the
//     ratio of their latencies and CPU costs (dispatch.go).
//
// Method: both servers run with GOMAXPROCS=1 pinned to CPU 0 (taskset); wrk
// (one thread, keep-alive connections) and this harness are pinned to CPU 1.
// The verdict comes from side-by-side rounds, which take the endpoints in
// turn: both servers are loaded at the same time, each by its own wrk,
// after a joint 1s warm-up, and each one's CPU time is read from
// /proc/<pid>/task/*/schedstat (nanoseconds; /proc/<pid>/stat counts 10 ms
// ticks) around the run. Whatever else this shared machine does then slows
// both alike, so the ratio of their CPU time per request (bare over
// orchestrator) is the ratio of the throughputs each reaches with a core to
// itself; the median over the rounds is checked, and the report ends with
// each probe's median, its range over the rounds and the verdicts. Measured
// one after the other, the plain req/s ratio moves by tens of percent
// between runs here, and side by side the scheduler does not split the core
// evenly over a few seconds, so req/s ratios are shown but not judged. A
// few rounds with each server alone on CPU 0 are reported too. A socket
// error or an error status in any wrk run fails the run, as does a
// preflight check that the two servers answer alike. Start times include
// the fork/exec of taskset, equally for both servers.
//
// Then, unless -postgres=false, the PostgreSQL mode (postgres.go) starts
// its own PostgreSQL (fsync on) and checks, with the real binary and
// DATABASE_URL:
//
//   - at least 3,000 heartbeats/s with -agents agents, beside the same
//     binary in memory;
//   - a p50 submit-to-completed overhead over a direct call to a fast fake
//     agent of at most 2 ms;
//   - at least 500 tasks/s completed with two replicas on one database
//     (one replica's figure beside it: the scaling);
//
// and reports each replica's peak RSS and database connections.
//
// Run it from the module: go run ./hack/bench [-duration 3s] [-rounds 9]
// [-alone-rounds 3] [-connections 32] [-bin prebuilt-orchestrator]
// [-agents 10000] [-heartbeat-rounds 3] [-heartbeat-alone-rounds 1]
// [-tasks 3000] [-probes-only] [-postgres=false] [-postgres-only]
// [-pg-tasks 5000] [-pg-submitters 32] [-pg-fake-agents 16]. With
// -probes-only it measures the endpoints' throughput and the peak RSS
// after it, and skips the heartbeats, the start to ready, the dispatch
// overhead and the PostgreSQL mode; with -postgres-only it runs the
// PostgreSQL mode alone. It exits 1 when a target is missed or the run
// fails, 0 otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"
)

const (
	serverCPU = "0" // the CPU the servers are pinned to
	loadCPU   = "1" // the CPU wrk and this harness are pinned to

	warmup      = time.Second
	starts      = 20 // starts per server for the start-to-ready measurement
	ratioTarget = 0.90
	rssTarget   = 20 << 10 // kB (20 MiB)
	readyTarget = 20 * time.Millisecond

	orchestratorPkg = "github.com/optiinfra/orchestrator/cmd/orchestrator"
	barePkg         = "github.com/optiinfra/orchestrator/hack/bench/bare"
)

// endpoint is a path to load and its throughput target (0: none). With a
// script (a wrk Lua file), the script makes the requests and path is only
// the name they are reported under.
type endpoint struct {
	path   string
	target float64
	script string
}

var endpoints = []endpoint{{"/live", ratioTarget, ""}, {"/ready", ratioTarget, ""}, {"/health", 0, ""}}

type options struct {
	duration    time.Duration
	rounds      int
	aloneRounds int
	connections int
	bin         string
	probesOnly  bool

	agents           int // agents registered for the heartbeat load
	heartbeatRounds  int
	heartbeatAlone   int
	tasks            int // tasks per path in the dispatch measurement
	tasksPerBlock    int
	dispatchWarmup   int
	dispatchTaskType string

	postgres     bool // run the PostgreSQL mode (postgres.go)
	postgresOnly bool
	pgTasks      int // tasks per sustained-throughput run
	pgSubmitters int
	pgFakeAgents int // names the fake agent is registered under
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each measurement (whole seconds)")
	flag.IntVar(&o.rounds, "rounds", 9, "rounds of side-by-side measurements per endpoint (the verdict)")
	flag.IntVar(&o.aloneRounds, "alone-rounds", 3, "rounds of each-server-alone measurements per endpoint (information)")
	flag.IntVar(&o.connections, "connections", 32, "wrk keep-alive connections")
	flag.StringVar(&o.bin, "bin", "", "prebuilt orchestrator binary (default: build "+orchestratorPkg+")")
	flag.IntVar(&o.agents, "agents", 10000, "agents registered before the heartbeat load, which cycles over them")
	flag.IntVar(&o.heartbeatRounds, "heartbeat-rounds", 3, "rounds of side-by-side heartbeat measurements")
	flag.IntVar(&o.heartbeatAlone, "heartbeat-alone-rounds", 1, "rounds of each-server-alone heartbeat measurements")
	flag.IntVar(&o.tasks, "tasks", 3000, "tasks per path in the dispatch measurement")
	flag.BoolVar(&o.probesOnly, "probes-only", false, "measure the endpoints' throughput and the peak RSS only")
	flag.BoolVar(&o.postgres, "postgres", true, "run the PostgreSQL mode too (heartbeats, submit to completed, throughput of one and two replicas)")
	flag.BoolVar(&o.postgresOnly, "postgres-only", false, "run the PostgreSQL mode only")
	flag.IntVar(&o.pgTasks, "pg-tasks", 5000, "tasks per sustained-throughput run of the PostgreSQL mode")
	flag.IntVar(&o.pgSubmitters, "pg-submitters", 32, "clients submitting at once in the sustained-throughput runs")
	flag.IntVar(&o.pgFakeAgents, "pg-fake-agents", 16, "names the fake agent is registered under in the PostgreSQL mode")
	flag.Parse()
	o.tasksPerBlock, o.dispatchWarmup, o.dispatchTaskType = 100, 200, "analyze"
	if o.duration < time.Second || o.duration%time.Second != 0 || o.rounds < 1 || o.aloneRounds < 0 || o.connections < 1 ||
		o.agents < 1 || o.heartbeatRounds < 1 || o.heartbeatAlone < 0 || o.tasks < o.tasksPerBlock ||
		o.pgTasks < 1 || o.pgSubmitters < 1 || o.pgFakeAgents < 1 || (o.probesOnly && o.postgresOnly) || flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: -duration must be whole seconds >= 1s, -rounds, -connections, -agents, -heartbeat-rounds,"+
			" -pg-tasks, -pg-submitters and -pg-fake-agents >= 1, -tasks >= %d, not both -probes-only and -postgres-only, no arguments\n", o.tasksPerBlock)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	passed, err := bench(ctx, o)
	if ctx.Err() != nil {
		err = errors.New("interrupted")
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	if err != nil || !passed {
		os.Exit(1)
	}
}

// bench runs the whole benchmark, prints the report and tells whether every
// target was met. Every process it starts is stopped before it returns.
func bench(ctx context.Context, o options) (bool, error) {
	tmp, err := os.MkdirTemp("", "orchestrator-bench-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp)
	defer stopAll()

	bare, orch := filepath.Join(tmp, "bare"), o.bin
	progress("building the bare reference server")
	if err := goBuild(ctx, bare, barePkg); err != nil {
		return false, err
	}
	if orch == "" {
		orch = filepath.Join(tmp, "orchestrator")
		progress("building the orchestrator")
		if err := goBuild(ctx, orch, orchestratorPkg); err != nil {
			return false, err
		}
	} else if orch, err = filepath.Abs(orch); err != nil {
		return false, err
	}
	// Pin every thread of this process to the load CPU, away from the servers.
	pin := exec.Command("taskset", "-a", "-p", "-c", loadCPU, strconv.Itoa(os.Getpid()))
	if out, err := pin.CombinedOutput(); err != nil {
		return false, fmt.Errorf("pinning the harness to CPU %s: %w: %s", loadCPU, err, out)
	}
	if o.postgresOnly {
		run, err := postgresBench(ctx, o, tmp, orch, bare)
		if err != nil {
			return false, err
		}
		passed := reportPostgres(os.Stdout, o, run)
		verdictLine(os.Stdout, passed)
		return passed, nil
	}

	// Throughput, then the orchestrator's peak RSS under that load.
	ref, err := startReady(ctx, "bare", bare, tmp)
	if err != nil {
		return false, err
	}
	svc, err := startReady(ctx, "orchestrator", orch, tmp)
	if err != nil {
		return false, err
	}
	notes, err := preflight(ref, svc)
	if err != nil {
		return false, err
	}
	// The verdict: both servers loaded side by side, sharing CPU 0; for
	// information, each alone.
	together, alone, err := throughputRounds(ctx, [2]*server{ref, svc}, endpoints, o.rounds, o.aloneRounds, o)
	if err != nil {
		return false, err
	}
	var rss [2]int
	for i, s := range []*server{ref, svc} {
		if rss[i], err = peakRSS(s.cmd.Process.Pid); err != nil {
			return false, err
		}
	}

	if o.probesOnly {
		for _, s := range []*server{ref, svc} {
			if err := s.stop(); err != nil {
				return false, err
			}
		}
		passed := report(os.Stdout, o, notes, together, alone, rss, [2][]time.Duration{})
		summary(os.Stdout, o, together, passed)
		return passed, nil
	}

	// Heartbeats, once the probes' RSS is read: the agents take memory.
	hb, err := heartbeats(ctx, [2]*server{ref, svc}, tmp, o)
	if err != nil {
		return false, err
	}
	for _, s := range []*server{ref, svc} {
		if err := s.stop(); err != nil {
			return false, err
		}
	}

	// Start to ready, alternating the two servers.
	var ready [2][]time.Duration
	progress(fmt.Sprintf("start to ready: %d starts of each server", starts))
	for range starts {
		for i, bin := range []string{bare, orch} {
			took, err := startToReady(ctx, []string{"bare", "orchestrator"}[i], bin, tmp)
			if err != nil {
				return false, err
			}
			ready[i] = append(ready[i], took)
		}
	}

	// Task dispatch overhead, against a fake agent started for it.
	agent, err := startReady(ctx, "fake agent", bare, tmp)
	if err != nil {
		return false, err
	}
	dr, err := dispatchOverhead(ctx, agent, o)
	if err != nil {
		return false, err
	}
	if err := agent.stop(); err != nil {
		return false, err
	}

	var pg pgRun
	if o.postgres {
		if pg, err = postgresBench(ctx, o, tmp, orch, bare); err != nil {
			return false, err
		}
	}

	passed := report(os.Stdout, o, notes, together, alone, rss, ready)
	reportHeartbeats(os.Stdout, o, hb)
	reportDispatch(os.Stdout, o, dr)
	if o.postgres {
		passed = reportPostgres(os.Stdout, o, pg) && passed
	}
	summary(os.Stdout, o, together, passed)
	return passed, nil
}

// throughputRounds loads each endpoint on both servers: rounds side by side
// (the verdict), then aloneRounds with each server alone on CPU 0, one
// after the other (information). Both maps go from path to one {bare,
// orchestrator} pair per round.
func throughputRounds(ctx context.Context, servers [2]*server, eps []endpoint, rounds, aloneRounds int, o options) (together, alone map[string][][2]result, err error) {
	together, alone = make(map[string][][2]result), make(map[string][][2]result)
	for round := range rounds {
		for _, e := range eps {
			progress(fmt.Sprintf("side by side, round %d/%d: %s", round+1, rounds, e.path))
			pair, err := sideBySide(ctx, servers, e, o.duration, o.connections)
			if err != nil {
				return nil, nil, err
			}
			together[e.path] = append(together[e.path], pair)
		}
	}
	for round := range aloneRounds {
		for _, e := range eps {
			var pair [2]result
			order := []int{0, 1}
			if round%2 == 1 {
				order = []int{1, 0}
			}
			for _, i := range order {
				s := servers[i]
				progress(fmt.Sprintf("alone, round %d/%d: %s %s", round+1, aloneRounds, s.name, e.path))
				if err := warm(ctx, s, e, o.connections); err != nil {
					return nil, nil, err
				}
				if pair[i], err = measure(ctx, s, e, o.duration, o.connections); err != nil {
					return nil, nil, err
				}
			}
			alone[e.path] = append(alone[e.path], pair)
		}
	}
	return together, alone, nil
}

// report prints the results tables and tells whether every target was met.
func report(out io.Writer, o options, notes []string, together, alone map[string][][2]result, rss [2]int, ready [2][]time.Duration) bool {
	passed := true
	verdict := func(ok bool) string {
		if ok {
			return "PASS"
		}
		passed = false
		return "FAIL"
	}
	fmt.Fprintf(out, "\nThroughput: wrk -t1 -c%d -d%s --timeout 10s (keep-alive) on CPU %s after a %s warm-up;"+
		" servers GOMAXPROCS=1 on CPU %s\n", o.connections, o.duration, loadCPU, warmup, serverCPU)
	fmt.Fprintln(out, "CPU: the server's CPU time over the run's wall time; µs/req: its CPU time per request;")
	fmt.Fprintln(out, "CPU ratio: bare µs/req over orchestrator µs/req.")
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	fmt.Fprintf(out, "\nSide by side (the verdict): both servers share CPU %s and are loaded at the same time by two wrk\n", serverCPU)
	fmt.Fprintln(out, "processes, so other load on the machine slows both alike. The scheduler does not split the core")
	fmt.Fprintln(out, "evenly over a few seconds, so the verdict is on the CPU ratio: throughput per CPU-second.")
	throughputTable(out, endpoints, together, verdict)
	fmt.Fprintf(out, "\nAlone (information): each server has CPU %s to itself, one after the other; other load on this\n", serverCPU)
	fmt.Fprintln(out, "shared machine moves these figures by tens of percent from one run to the next.")
	throughputTable(out, endpoints, alone, nil)

	fmt.Fprintln(out)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "measure\tbare\torchestrator\ttarget\tverdict\t")
	fmt.Fprintf(w, "peak RSS after the load (VmHWM)\t%.1f MiB\t%.1f MiB\t<= %d MiB\t%s\t\n",
		float64(rss[0])/1024, float64(rss[1])/1024, rssTarget>>10, verdict(rss[1] <= rssTarget))
	if len(ready[0]) > 0 {
		var med [2]time.Duration
		for i := range ready {
			med[i] = time.Duration(median(seconds(ready[i])) * float64(time.Second))
		}
		fmt.Fprintf(w, "start to first /ready 200, median of %d\t%s\t%s\t<= %s\t%s\t\n",
			starts, ms(med[0]), ms(med[1]), ms(readyTarget), verdict(med[1] <= readyTarget))
		fmt.Fprintf(w, "start to first /ready 200, p90\t%s\t%s\t\t\t\n", ms(p90(ready[0])), ms(p90(ready[1])))
	}
	w.Flush()

	return passed
}

// summary ends the report: each probe's verdict, then whether every
// target was met.
func summary(out io.Writer, o options, together map[string][][2]result, passed bool) {
	fmt.Fprintf(out, "\nProbes: the median over %d side-by-side rounds of the CPU ratio, bare µs/req over orchestrator\n", o.rounds)
	fmt.Fprintln(out, "µs/req (1 would mean the middleware, router and probe handler cost nothing):")
	for _, e := range endpoints {
		if e.target == 0 {
			continue
		}
		rs := cpuRatios(together[e.path])
		verdict := "PASS"
		if median(rs) < e.target {
			verdict = "FAIL"
		}
		fmt.Fprintf(out, "  %-7s %.3f (rounds %.3f to %.3f), target >= %.2f: %s\n",
			e.path, median(rs), slices.Min(rs), slices.Max(rs), e.target, verdict)
	}
	verdictLine(out, passed)
}

// verdictLine ends the report: whether every target was met.
func verdictLine(out io.Writer, passed bool) {
	if passed {
		fmt.Fprintln(out, "\nPASS: every target met")
	} else {
		fmt.Fprintln(out, "\nFAIL: a target was missed")
	}
}

// throughputTable prints one row per round and the medians; with a verdict
// function, the median CPU ratio is checked against each endpoint's target.
func throughputTable(out io.Writer, eps []endpoint, runs map[string][][2]result, verdict func(bool) string) {
	if len(runs) == 0 {
		fmt.Fprintln(out, "  (no rounds)")
		return
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "endpoint\tround\tbare req/s\tCPU\tµs/req\torchestrator req/s\tCPU\tµs/req\tratio\tCPU ratio\ttarget\tverdict\t")
	for _, e := range eps {
		var rps, share, us [2][]float64 // per server: bare, orchestrator
		var ratios, cpuRatios []float64
		for i, p := range runs[e.path] {
			line := fmt.Sprintf("%s\t%d", e.path, i+1)
			for j, r := range p {
				rps[j], share[j], us[j] = append(rps[j], r.rps), append(share[j], r.share), append(us[j], r.usPerRequest())
				line += cells(r.rps, r.share, r.usPerRequest())
			}
			ratios, cpuRatios = append(ratios, p[1].rps/p[0].rps), append(cpuRatios, p[0].usPerRequest()/p[1].usPerRequest())
			fmt.Fprintf(w, "%s\t%.3f\t%.3f\t\t\t\n", line, ratios[i], cpuRatios[i])
		}
		target, ok := "none", "-"
		if e.target > 0 && verdict != nil {
			target, ok = fmt.Sprintf("CPU ratio >= %.2f", e.target), verdict(median(cpuRatios) >= e.target)
		}
		fmt.Fprintf(w, "%s\tmedian%s%s\t%.3f\t%.3f\t%s\t%s\t\n", e.path,
			cells(median(rps[0]), median(share[0]), median(us[0])), cells(median(rps[1]), median(share[1]), median(us[1])),
			median(ratios), median(cpuRatios), target, ok)
	}
	w.Flush()
}

// cpuRatios returns each round's CPU ratio: bare µs/req over orchestrator µs/req.
func cpuRatios(rounds [][2]result) []float64 {
	rs := make([]float64, len(rounds))
	for i, p := range rounds {
		rs[i] = p[0].usPerRequest() / p[1].usPerRequest()
	}
	return rs
}

// cells formats one server's columns: req/s, CPU share, µs of CPU per request.
func cells(rps, share, us float64) string {
	return fmt.Sprintf("\t%.0f\t%.0f%%\t%.1f", rps, 100*share, us)
}

// startReady starts a long-lived server and waits for its /ready.
func startReady(ctx context.Context, name, bin, dir string) (*server, error) {
	return startReadyOn(ctx, serverCPU, name, bin, dir)
}

// startReadyOn is startReady on the CPUs cpus, with the settings env.
func startReadyOn(ctx context.Context, cpus, name, bin, dir string, env ...string) (*server, error) {
	progress("starting " + name)
	s, err := startServerOn(cpus, name, bin, dir, env...)
	if err != nil {
		return nil, err
	}
	if _, err := waitReady(ctx, s, time.Now()); err != nil {
		return nil, err
	}
	return s, nil
}

// preflight checks that the two servers answer every endpoint 200 with the
// same Content-Type and, for the probes, the same body; it returns notes on
// the /health bodies.
func preflight(ref, svc *server) ([]string, error) {
	var notes []string
	for _, e := range endpoints {
		var ans [2]answer
		for i, s := range []*server{ref, svc} {
			a, err := get(s.url(e.path))
			if err != nil {
				return nil, fmt.Errorf("preflight %s: %w", s.name, err)
			}
			if a.status != http.StatusOK {
				return nil, fmt.Errorf("preflight: %s %s answered %d", s.name, e.path, a.status)
			}
			ans[i] = a
		}
		if ans[0].contentType != ans[1].contentType {
			return nil, fmt.Errorf("preflight %s: Content-Type %q (bare) != %q (orchestrator)", e.path, ans[0].contentType, ans[1].contentType)
		}
		if e.path == "/health" {
			notes = append(notes, fmt.Sprintf("/health bodies: bare %d bytes, orchestrator %d bytes", len(ans[0].body), len(ans[1].body)))
		} else if ans[0].body != ans[1].body {
			return nil, fmt.Errorf("preflight %s: body %q (bare) != %q (orchestrator)", e.path, ans[0].body, ans[1].body)
		}
	}
	return notes, nil
}

type answer struct {
	status      int
	contentType string
	body        string
}

func get(url string) (answer, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header.Get("Content-Type"), string(body)}, err
}

func goBuild(ctx context.Context, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.SysProcAttr = childAttr()
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) } // let go clean up
	cmd.WaitDelay = 5 * time.Second
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

func progress(msg string) { fmt.Fprintln(os.Stderr, "bench:", msg) }

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// p90 is the nearest-rank 90th percentile.
func p90(ds []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	return s[(len(s)*9+9)/10-1]
}

func seconds(ds []time.Duration) []float64 {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = d.Seconds()
	}
	return xs
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
