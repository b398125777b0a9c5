package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// The PostgreSQL mode (issue 10): the real binary with DATABASE_URL, beside
// the same binary keeping its state in memory, in the same run.
//
// The harness starts its own PostgreSQL (Debian's package, through
// internal/postgres/pgtest) with fsync and synchronous_commit on, as in
// production, on this machine, and removes it at the end. Every
// orchestrator runs with its default settings (DATABASE_MAX_CONNS=10,
// TASK_AGENT_CONCURRENCY=4) and GOMAXPROCS=1, as a pod with one CPU would;
// each replica names itself to PostgreSQL (application_name
// orchestrator-<role>), so pg_stat_activity counts its connections.
//
//   - Heartbeats: two orchestrators pinned to serverCPU, one in memory and
//     one on PostgreSQL, each with -agents agents registered, loaded in
//     turn by the same wrk script shape as the heartbeat section (each
//     with its own agents' IDs) on loadCPU. PostgreSQL may use either
//     CPU. The orchestrator's CPU time and PostgreSQL's (every server
//     process) are read around each run.
//   - Submit to completed, one task at a time: a fake agent (the bare
//     server's POST /task, on loadCPU) registered under -pg-fake-agents
//     names; three paths taking turns in blocks: the direct POST /task,
//     POST /tasks to the memory orchestrator, and to the PostgreSQL one,
//     each then polling GET /tasks/{id} every pollPause until the task is
//     terminal. The verdict is the latency the service recorded: from the
//     moment the harness sent the submission to the task's completed_at
//     (the same machine's clock), so that how often a client polls does
//     not count, nor do the polls take the CPU the service needs.
//   - Sustained throughput: -pg-tasks tasks submitted by -pg-submitters
//     clients at once, round-robin over one replica, then over two (the
//     second joining the first on the same database), the time from the
//     first submission to the last completion read from the replicas'
//     orchestrator_tasks_total (so that no polling loads them). Every
//     process may run on either CPU here (the replicas still GOMAXPROCS=1):
//     the question is what a second replica adds, on a machine whose two
//     cores also run PostgreSQL, the fake agent and the load.
//
// Peak RSS (VmHWM) of each replica after the load, and the most
// connections pg_stat_activity showed per replica during it (sampled),
// are reported beside.

// Targets of the PostgreSQL mode, and the pause between polls of a task.
const (
	pollPause           = 500 * time.Microsecond
	pgHeartbeatTarget   = 3000.0                 // heartbeats/s on PostgreSQL with -agents agents
	pgOverheadTarget    = 2 * time.Millisecond   // p50 submit-to-completed over the direct call
	pgThroughputTarget  = 500.0                  // tasks/s completed with two replicas
	connectionsInterval = 250 * time.Millisecond // between samples of pg_stat_activity
	anyCPU              = "0,1"
)

// pgResult is one wrk run against an orchestrator, with PostgreSQL's CPU
// time during it.
type pgResult struct {
	result
	db time.Duration
}

// dbUSPerRequest is PostgreSQL's CPU time per request, in µs.
func (r pgResult) dbUSPerRequest() float64 { return r.db.Seconds() * 1e6 / float64(r.requests) }

// connCount is the most connections seen at once for one application_name,
// and the most of them running a query at once.
type connCount struct{ total, active int }

// pgHeartbeats is the outcome of the heartbeat comparison.
type pgHeartbeats struct {
	register [2]time.Duration // to register the agents: memory, PostgreSQL
	rounds   [][2]pgResult    // per round: memory, PostgreSQL
	rss      [2]int           // kB, after the load
	conns    connCount
	// Where PostgreSQL's time went during the rounds: the statements
	// that took most of it, and the agents table's updates.
	statements []statementStat
	updates    tableUpdates
}

// statementStat is one statement's line of pg_stat_statements.
type statementStat struct {
	query         string
	calls         int64
	meanMS, total float64 // mean and total execution time, ms
	wal           int64   // WAL bytes written
}

// tableUpdates are the agents table's row updates, and how many of them
// were heap-only (HOT: no index entry written).
type tableUpdates struct{ updates, hot int64 }

// pgThroughput is one sustained-throughput run.
type pgThroughput struct {
	replicas int
	tasks    int
	submit   time.Duration // from the first submission to the last 201
	total    time.Duration // from the first submission to the last completion
	cpu      []time.Duration
	dbCPU    time.Duration
	rss      []int // kB, per replica, after the load
	conns    []connCount
}

func (t pgThroughput) rate() float64 { return float64(t.tasks) / t.total.Seconds() }

// pgRun is the outcome of the PostgreSQL mode.
type pgRun struct {
	version    string
	hb         pgHeartbeats
	latency    []dispatchResult // direct, memory, PostgreSQL
	throughput []pgThroughput   // one replica, two
	// The PostgreSQL path's tasks, as they recorded themselves: created to
	// started (submission and claim) and started to completed (delivery
	// and its outcome).
	claim, deliver []time.Duration
	// Each POST /tasks path's tasks from the moment the harness sent the
	// submission to the completion the service recorded (completed_at):
	// memory, PostgreSQL.
	recorded [2][]time.Duration
	// PostgreSQL's busiest statements in the tasks' database during the
	// one-at-a-time runs, and during the two-replica throughput run.
	latencyStatements, throughputStatements []statementStat
}

// database is the harness's PostgreSQL, and its own connection to it.
type database struct {
	srv  *pgtest.Server
	conn *pgx.Conn
}

// url is the URL of database name for an orchestrator in role role.
func (d *database) url(name, role string) string {
	return d.srv.URL(name) + "&application_name=orchestrator-" + role
}

// cpuSnapshot is the CPU time of a process tree at one moment: each live
// process's, and what the root's exited children took (from the root's
// /proc stat, in clock ticks).
type cpuSnapshot struct {
	live   map[int]time.Duration
	reaped time.Duration
}

// since is the tree's CPU time from before to s: the live processes'
// growth (all of it for those born since), plus what the children that
// exited since took after before was read.
func (s cpuSnapshot) since(before cpuSnapshot) time.Duration {
	total := s.reaped - before.reaped
	for pid, t := range s.live {
		total += t - before.live[pid]
	}
	for pid, t := range before.live {
		if _, ok := s.live[pid]; !ok {
			total -= t // counted in reaped, whole
		}
	}
	return total
}

// cpu reads the CPU time of every PostgreSQL server process. Backends and
// autovacuum workers come and go: a process's time is counted once, from
// schedstat while it lives and from the postmaster's cutime and cstime
// once it has exited.
func (d *database) cpu() (cpuSnapshot, error) {
	root := d.srv.PID()
	snap := cpuSnapshot{live: map[int]time.Duration{}}
	if err := treeCPU(root, snap.live); err != nil {
		return snap, err
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(root) + "/stat")
	if err != nil {
		return snap, err
	}
	// Fields after the command's closing parenthesis; cutime and cstime
	// are the 16th and 17th fields of the line.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 15 {
		return snap, fmt.Errorf("/proc/%d/stat: %q", root, stat)
	}
	for _, field := range f[13:15] {
		ticks, err := strconv.ParseInt(field, 10, 64)
		if err != nil {
			return snap, fmt.Errorf("/proc/%d/stat: %q: %w", root, stat, err)
		}
		snap.reaped += time.Duration(ticks) * (time.Second / clockTicks)
	}
	return snap, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// postgresBench runs the PostgreSQL mode with the orchestrator binary orch
// and the bare server bare; every process it starts is stopped, and the
// database removed, before it returns.
func postgresBench(ctx context.Context, o options, tmp, orch, bare string) (run pgRun, err error) {
	progress("starting PostgreSQL (fsync on)")
	srv, err := pgtest.Launch(pgtest.Options{Durable: true, Settings: []string{
		"shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.track = all"}})
	if err != nil {
		return run, err
	}
	defer srv.Destroy()
	db := &database{srv: srv}
	// The server would inherit the harness's CPU (loadCPU): let it use
	// both, as a co-located database would, the orchestrators being the
	// ones confined to a CPU.
	if err := pinTree(srv.PID(), anyCPU); err != nil {
		return run, err
	}
	if db.conn, err = pgx.Connect(ctx, srv.URL("postgres")+"&application_name=bench-harness"); err != nil {
		return run, err
	}
	defer db.conn.Close(context.Background())
	if err := db.conn.QueryRow(ctx, "SELECT current_setting('server_version') || ', fsync ' || current_setting('fsync') ||"+
		" ', synchronous_commit ' || current_setting('synchronous_commit')").Scan(&run.version); err != nil {
		return run, err
	}

	if run.hb, err = pgHeartbeatRun(ctx, db, o, tmp, orch); err != nil {
		return run, err
	}
	if err := pgDispatch(ctx, db, o, tmp, orch, bare, &run); err != nil {
		return run, err
	}
	return run, nil
}

// pgHeartbeatRun compares heartbeats on the memory and PostgreSQL stores.
func pgHeartbeatRun(ctx context.Context, db *database, o options, tmp, orch string) (hb pgHeartbeats, err error) {
	if _, err := db.srv.CreateDatabase(ctx, "heartbeats"); err != nil {
		return hb, err
	}
	var servers [2]*server
	servers[0], err = startReadyOn(ctx, serverCPU, "orchestrator (memory)", orch, tmp)
	if err != nil {
		return hb, err
	}
	servers[1], err = startReadyOn(ctx, serverCPU, "orchestrator (PostgreSQL)", orch, tmp,
		"DATABASE_URL="+db.url("heartbeats", "heartbeats"))
	if err != nil {
		return hb, err
	}
	var eps [2]endpoint
	var last [2]string
	for i, s := range servers {
		progress(fmt.Sprintf("registering %d agents with the %s", o.agents, s.name))
		begin := time.Now()
		ids, err := registerAgents(ctx, s, o.agents)
		if err != nil {
			return hb, err
		}
		hb.register[i] = time.Since(begin)
		progress(fmt.Sprintf("one heartbeat from each agent of the %s", s.name))
		if err := primeHeartbeats(ctx, s, ids, o.connections); err != nil {
			return hb, err
		}
		script := fmt.Sprintf("%s/heartbeat-%d.lua", tmp, i)
		if err := os.WriteFile(script, heartbeatScript(ids), 0o600); err != nil {
			return hb, err
		}
		eps[i], last[i] = endpoint{path: heartbeatPath, script: script}, ids[len(ids)-1]
	}
	if err := preflightHeartbeat(servers, last); err != nil {
		return hb, err
	}
	hbDB, err := pgx.Connect(ctx, db.srv.URL("heartbeats")+"&application_name=bench-harness")
	if err != nil {
		return hb, err
	}
	defer hbDB.Close(context.Background())
	if _, err := hbDB.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return hb, err
	}
	updates0, err := agentUpdates(ctx, hbDB)
	if err != nil {
		return hb, err
	}
	if _, err := hbDB.Exec(ctx, "SELECT pg_stat_statements_reset()"); err != nil {
		return hb, err
	}
	watch := watchConnections(ctx, db.conn)
	for round := range o.heartbeatRounds {
		var pair [2]pgResult
		for k := range servers {
			i := (round + k) % 2
			progress(fmt.Sprintf("heartbeats, round %d/%d: %s", round+1, o.heartbeatRounds, servers[i].name))
			if err := warm(ctx, servers[i], eps[i], o.connections); err != nil {
				return hb, err
			}
			db0, err := db.cpu()
			if err != nil {
				return hb, err
			}
			r, err := measure(ctx, servers[i], eps[i], o.duration, o.connections)
			if err != nil {
				return hb, err
			}
			db1, err := db.cpu()
			if err != nil {
				return hb, err
			}
			pair[i] = pgResult{r, db1.since(db0)}
		}
		hb.rounds = append(hb.rounds, pair)
	}
	conns, err := watch()
	if err != nil {
		return hb, err
	}
	hb.conns = conns["orchestrator-heartbeats"]
	if hb.statements, err = topStatements(ctx, hbDB, 5); err != nil {
		return hb, err
	}
	updates1, err := agentUpdates(ctx, hbDB)
	if err != nil {
		return hb, err
	}
	hb.updates = tableUpdates{updates1.updates - updates0.updates, updates1.hot - updates0.hot}
	for i, s := range servers {
		if hb.rss[i], err = peakRSS(s.cmd.Process.Pid); err != nil {
			return hb, err
		}
		if err := s.stop(); err != nil {
			return hb, err
		}
	}
	return hb, nil
}

// agentUpdates reads the agents table's update counters. The statistics
// collector publishes them with a delay of up to a second or so: the
// caller reads them after a measurement that lasts longer.
func agentUpdates(ctx context.Context, conn *pgx.Conn) (tableUpdates, error) {
	var u tableUpdates
	if _, err := conn.Exec(ctx, "SELECT pg_stat_clear_snapshot()"); err != nil {
		return u, err
	}
	err := conn.QueryRow(ctx, `SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'agents'`).Scan(&u.updates, &u.hot)
	return u, err
}

// topStatements returns the n statements of the orchestrator's database
// that took the most execution time since pg_stat_statements was reset.
func topStatements(ctx context.Context, conn *pgx.Conn, n int) ([]statementStat, error) {
	rows, err := conn.Query(ctx, `SELECT regexp_replace(query, '\s+', ' ', 'g'), calls, mean_exec_time, total_exec_time, wal_bytes::bigint
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY total_exec_time DESC LIMIT $1`, n)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (statementStat, error) {
		var st statementStat
		err := row.Scan(&st.query, &st.calls, &st.meanMS, &st.total, &st.wal)
		return st, err
	})
}

// primeHeartbeats sends one heartbeat for each agent of ids to s, from
// clients connections at once. An agent's first heartbeat stores metadata
// where there was none: in PostgreSQL that also updates the registry's
// one row of totals, which every such heartbeat locks until it commits.
// The measured rounds then see what a fleet's steady heartbeats cost,
// whose metadata keeps its size.
func primeHeartbeats(ctx context.Context, s *server, ids []string, clients int) error {
	client := operatorClient(clients)
	defer client.CloseIdleConnections()
	var next atomic.Int64
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for k := next.Add(1) - 1; k < int64(len(ids)) && ctx.Err() == nil; k = next.Add(1) - 1 {
				a, err := post(ctx, client, s.url("/agents/"+ids[k]+"/heartbeat"), []byte(heartbeatBody))
				if err == nil && a.status != http.StatusOK {
					err = fmt.Errorf("%s: heartbeat: %d %s", s.name, a.status, a.body)
				}
				if err != nil {
					errs[c] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// pgDispatch measures submit-to-completed, one task at a time, then the
// sustained throughput of one replica and of two.
func pgDispatch(ctx context.Context, db *database, o options, tmp, orch, bare string, run *pgRun) error {
	if _, err := db.srv.CreateDatabase(ctx, "tasks"); err != nil {
		return err
	}
	tasksDB, err := pgx.Connect(ctx, db.srv.URL("tasks")+"&application_name=bench-harness")
	if err != nil {
		return err
	}
	defer tasksDB.Close(context.Background())
	if _, err := tasksDB.Exec(ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
		return err
	}
	agent, err := startReadyOn(ctx, loadCPU, "fake agent", bare, tmp)
	if err != nil {
		return err
	}
	mem, err := startReadyOn(ctx, serverCPU, "orchestrator (memory)", orch, tmp)
	if err != nil {
		return err
	}
	first, err := startReadyOn(ctx, serverCPU, "replica 1 (PostgreSQL)", orch, tmp, "DATABASE_URL="+db.url("tasks", "replica-1"))
	if err != nil {
		return err
	}
	var fakeIDs [2][]string
	for i, s := range []*server{mem, first} {
		if fakeIDs[i], err = registerFakeAgents(ctx, s, agent, o.pgFakeAgents, o.dispatchTaskType); err != nil {
			return err
		}
	}
	// The fake agent heartbeats as a real one would: silent for
	// AGENT_MISSED_HEARTBEATS intervals, it would be taken for unreachable
	// in the middle of the run. Every replica sees the PostgreSQL ones'.
	stopMem := keepAlive(ctx, mem, fakeIDs[0])
	defer func() { _ = stopMem() }() // on early returns; the normal path checks it
	stopFirst := keepAlive(ctx, first, fakeIDs[1])
	defer func() { _ = stopFirst() }()

	progress(fmt.Sprintf("submit to completed: %d tasks per path, one at a time", o.tasks))
	direct := dispatch.NewClient(&registry.Guard{Networks: mustNetworks("127.0.0.0/8")})
	operator := operatorClient(1)
	body := submitBody(o.dispatchTaskType)
	paths := []dispatchPath{
		directPath(direct, agent.url("/task"), o.dispatchTaskType),
		{"POST /tasks, memory, polled", func(ctx context.Context, _ int) error {
			sent := time.Now()
			task, err := submitAndWait(ctx, operator, mem, body)
			if err == nil {
				run.recorded[0] = append(run.recorded[0], task.CompletedAt.Sub(sent))
			}
			return err
		}},
		{"POST /tasks, PostgreSQL, polled", func(ctx context.Context, _ int) error {
			sent := time.Now()
			task, err := submitAndWait(ctx, operator, first, body)
			if err == nil {
				run.recorded[1] = append(run.recorded[1], task.CompletedAt.Sub(sent))
				run.claim = append(run.claim, task.StartedAt.Sub(task.CreatedAt))
				run.deliver = append(run.deliver, task.CompletedAt.Sub(*task.StartedAt))
			}
			return err
		}},
	}
	if _, err := tasksDB.Exec(ctx, "SELECT pg_stat_statements_reset()"); err != nil {
		return err
	}
	if run.latency, err = runDispatchPaths(ctx, paths, o); err != nil {
		return err
	}
	if run.latencyStatements, err = topStatements(ctx, tasksDB, 8); err != nil {
		return err
	}
	if err := stopMem(); err != nil {
		return err
	}
	if err := mem.stop(); err != nil {
		return err
	}

	// Throughput: every process may use either CPU.
	self := strconv.Itoa(os.Getpid())
	if out, err := exec.CommandContext(ctx, "taskset", "-a", "-p", "-c", anyCPU, self).CombinedOutput(); err != nil {
		return fmt.Errorf("unpinning the harness: %w: %s", err, out)
	}
	for _, pid := range []int{agent.cmd.Process.Pid, first.cmd.Process.Pid} {
		if err := pinTree(pid, anyCPU); err != nil {
			return err
		}
	}
	replicas := []*server{first}
	for n := 1; n <= 2; n++ {
		if n == 2 {
			second, err := startReadyOn(ctx, anyCPU, "replica 2 (PostgreSQL)", orch, tmp, "DATABASE_URL="+db.url("tasks", "replica-2"))
			if err != nil {
				return err
			}
			replicas = append(replicas, second)
		}
		if _, err := tasksDB.Exec(ctx, "SELECT pg_stat_statements_reset()"); err != nil {
			return err
		}
		r, err := sustained(ctx, db, replicas, o)
		if err != nil {
			return err
		}
		run.throughput = append(run.throughput, r)
	}
	if run.throughputStatements, err = topStatements(ctx, tasksDB, 8); err != nil {
		return err
	}
	if err := stopFirst(); err != nil {
		return err
	}
	for _, s := range append(replicas, agent) {
		if err := s.stop(); err != nil {
			return err
		}
	}
	return nil
}

// registerFakeAgents registers the fake agent with s under n names, each
// with the capability taskType, and returns their IDs.
func registerFakeAgents(ctx context.Context, s, agent *server, n int, taskType string) ([]string, error) {
	client, err := orchestrator.NewClient(s.url(""), orchestrator.WithHTTPClient(&http.Client{Timeout: 10 * time.Second}))
	if err != nil {
		return nil, err
	}
	defer client.CloseIdleConnections()
	var ids []string
	for i := range n {
		reply, err := client.Register(ctx, orchestrator.Registration{
			Name: fmt.Sprintf("fake-agent-%02d", i), Type: orchestrator.AgentTypeCost, Host: "127.0.0.1", Port: agent.port,
			Capabilities: []string{taskType}, Version: "1.0.0",
		})
		if err != nil {
			return nil, fmt.Errorf("registering the fake agent with %s: %w", s.name, err)
		}
		ids = append(ids, reply.AgentID)
	}
	return ids, nil
}

// keepAliveInterval is how often the fake agent heartbeats: a third of
// the default AGENT_HEARTBEAT_INTERVAL.
const keepAliveInterval = 10 * time.Second

// keepAlive heartbeats for the agents ids at s every keepAliveInterval
// until the returned function is called, which returns the first failure.
// It may be called more than once.
func keepAlive(ctx context.Context, s *server, ids []string) func() error {
	stop := make(chan struct{})
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		client := &http.Client{Timeout: 5 * time.Second}
		defer client.CloseIdleConnections()
		tick := time.NewTicker(keepAliveInterval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for _, id := range ids {
				a, perr := post(ctx, client, s.url("/agents/"+id+"/heartbeat"), []byte(`{"status":"healthy"}`))
				if perr == nil && a.status != http.StatusOK {
					perr = fmt.Errorf("%d %s", a.status, a.body)
				}
				if perr != nil && ctx.Err() == nil {
					err = fmt.Errorf("fake agent's heartbeat to %s: %w", s.name, perr)
					return
				}
			}
		}
	}()
	var once sync.Once
	return func() error {
		once.Do(func() { close(stop) })
		<-done
		return err
	}
}

// operatorClient is a keep-alive client for up to conns connections to
// each replica.
func operatorClient(conns int) *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 4 * conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute},
	}
}

func submitBody(taskType string) []byte {
	b, _ := json.Marshal(orchestrator.TaskRequest{TaskType: taskType, AgentType: orchestrator.AgentTypeCost, Parameters: taskParameters})
	return b
}

// submit POSTs a task to s and returns its ID.
func submit(ctx context.Context, client *http.Client, s *server, body []byte) (string, error) {
	a, err := post(ctx, client, s.url("/tasks"), body)
	if err != nil {
		return "", err
	}
	var created orchestrator.TaskAccepted
	if a.status != http.StatusCreated || json.Unmarshal([]byte(a.body), &created) != nil || created.TaskID == "" {
		return "", fmt.Errorf("%s: POST /tasks: %d %s", s.name, a.status, a.body)
	}
	return created.TaskID, nil
}

// submitAndWait submits a task to s and polls it every pollPause until it
// is terminal, and returns it as last read; it fails unless the task
// completed, with its start and completion recorded. The latency that
// matters is read from the record (completed_at, on this machine's
// clock), so the polls may pause: GETs one after the other would take the
// CPU the service needs (on PostgreSQL, each GET is a query), and slow
// down what they measure.
func submitAndWait(ctx context.Context, client *http.Client, s *server, body []byte) (orchestrator.Task, error) {
	id, err := submit(ctx, client, s, body)
	if err != nil {
		return orchestrator.Task{}, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		task, err := getTask(ctx, client, s.url("/tasks/"+id))
		if err != nil {
			return task, fmt.Errorf("%s: %w", s.name, err)
		}
		if task.Status.Terminal() {
			if task.Status != orchestrator.TaskCompleted || task.StartedAt == nil || task.CompletedAt == nil {
				return task, fmt.Errorf("%s: task %s %s (started %v, completed %v): %s", s.name, id, task.Status,
					task.StartedAt, task.CompletedAt, task.Error)
			}
			return task, nil
		}
		if time.Now().After(deadline) {
			return task, fmt.Errorf("%s: task %s still %s after 10s", s.name, id, task.Status)
		}
		time.Sleep(pollPause)
	}
}

func getTask(ctx context.Context, client *http.Client, url string) (orchestrator.Task, error) {
	var task orchestrator.Task
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return task, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return task, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return task, err
	}
	if resp.StatusCode != http.StatusOK {
		return task, fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, data)
	}
	return task, json.Unmarshal(data, &task)
}

// sustained submits o.pgTasks tasks from o.pgSubmitters clients at once,
// round-robin over replicas, and waits until the replicas' metrics count
// them all completed, after a warm-up of o.dispatchWarmup tasks run the
// same way.
func sustained(ctx context.Context, db *database, replicas []*server, o options) (pgThroughput, error) {
	run := pgThroughput{replicas: len(replicas), tasks: o.pgTasks}
	client := operatorClient(o.pgSubmitters)
	defer client.CloseIdleConnections()
	body := submitBody(o.dispatchTaskType)

	progress(fmt.Sprintf("throughput, %d replica(s): warm-up", len(replicas)))
	if _, _, err := pushTasks(ctx, client, replicas, body, o.dispatchWarmup, o.pgSubmitters); err != nil {
		return run, err
	}

	progress(fmt.Sprintf("throughput, %d replica(s): %d tasks from %d clients", len(replicas), o.pgTasks, o.pgSubmitters))
	cpu0 := make([]time.Duration, len(replicas))
	for i, s := range replicas {
		var err error
		if cpu0[i], err = cpuTime(s.cmd.Process.Pid); err != nil {
			return run, err
		}
	}
	db0, err := db.cpu()
	if err != nil {
		return run, err
	}
	watch := watchConnections(ctx, db.conn)
	submitted, total, err := pushTasks(ctx, client, replicas, body, o.pgTasks, o.pgSubmitters)
	conns, werr := watch()
	if err = errors.Join(err, werr); err != nil {
		return run, err
	}
	run.submit, run.total = submitted, total
	db1, err := db.cpu()
	if err != nil {
		return run, err
	}
	run.dbCPU = db1.since(db0)
	for i, s := range replicas {
		cpu1, err := cpuTime(s.cmd.Process.Pid)
		if err != nil {
			return run, err
		}
		rss, err := peakRSS(s.cmd.Process.Pid)
		if err != nil {
			return run, err
		}
		run.cpu, run.rss = append(run.cpu, cpu1-cpu0[i]), append(run.rss, rss)
		run.conns = append(run.conns, conns["orchestrator-replica-"+strconv.Itoa(i+1)])
	}
	return run, nil
}

// pushTasks submits n tasks from clients goroutines at once, task k to
// replicas[k % len(replicas)], then waits until the replicas' metrics count
// n more tasks completed. It returns the time to the last submission and
// to the last completion; any task that ends otherwise fails it.
func pushTasks(ctx context.Context, client *http.Client, replicas []*server, body []byte, n, clients int) (submitted, total time.Duration, err error) {
	before, err := finishedTasks(ctx, client, replicas)
	if err != nil {
		return 0, 0, err
	}
	begin := time.Now()
	var next atomic.Int64
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for {
				k := next.Add(1) - 1
				if k >= int64(n) || ctx.Err() != nil {
					return
				}
				if _, err := submit(ctx, client, replicas[k%int64(len(replicas))], body); err != nil {
					errs[c] = err
					next.Store(int64(n)) // stop the others
					return
				}
			}
		})
	}
	wg.Wait()
	submitted = time.Since(begin)
	if err := errors.Join(errs...); err != nil {
		return 0, 0, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		now, err := finishedTasks(ctx, client, replicas)
		if err != nil {
			return 0, 0, err
		}
		for outcome, count := range now {
			if outcome != "completed" && count > before[outcome] {
				return 0, 0, fmt.Errorf("%.0f tasks ended %s", count-before[outcome], outcome)
			}
		}
		if done := now["completed"] - before["completed"]; done >= float64(n) {
			return submitted, time.Since(begin), nil
		} else if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("%.0f of %d tasks completed after 2 minutes", done, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// finishedTasks sums orchestrator_tasks_total over the replicas, by outcome.
func finishedTasks(ctx context.Context, client *http.Client, replicas []*server) (map[string]float64, error) {
	sums := map[string]float64{}
	for _, s := range replicas {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url("/metrics"), nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%s /metrics: %w", s.name, err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("%s /metrics: %d", s.name, resp.StatusCode)
		}
		err = addOutcomes(resp.Body, sums)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("%s /metrics: %w", s.name, err)
		}
	}
	return sums, nil
}

// addOutcomes adds the orchestrator_tasks_total series of a Prometheus
// text exposition to sums, by outcome.
func addOutcomes(r io.Reader, sums map[string]float64) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "orchestrator_tasks_total{")
		if !ok {
			continue
		}
		_, rest, ok := strings.Cut(line, `outcome="`)
		if !ok {
			return fmt.Errorf("no outcome label: %q", sc.Text())
		}
		outcome, _, _ := strings.Cut(rest, `"`)
		value, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return fmt.Errorf("%q: %w", sc.Text(), err)
		}
		sums[outcome] += value
	}
	return sc.Err()
}

// watchConnections samples pg_stat_activity every connectionsInterval
// until the returned function is called, which returns the most client
// connections seen at once per application_name. The queries run under
// ctx, never a context cancelled to stop them: pgx closes a connection
// whose query is cancelled, and conn serves the harness to the end.
func watchConnections(ctx context.Context, conn *pgx.Conn) func() (map[string]connCount, error) {
	stop := make(chan struct{})
	most := map[string]connCount{}
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(connectionsInterval)
		defer tick.Stop()
		for {
			if err = sampleConnections(ctx, conn, most); err != nil {
				err = fmt.Errorf("sampling pg_stat_activity: %w", err)
				return
			}
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() (map[string]connCount, error) {
		close(stop)
		<-done
		return most, err
	}
}

// sampleConnections counts the orchestrators' connections once, keeping
// the most seen per application_name in most.
func sampleConnections(ctx context.Context, conn *pgx.Conn, most map[string]connCount) error {
	rows, err := conn.Query(ctx, `SELECT application_name, count(*), count(*) FILTER (WHERE state = 'active')
		FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name LIKE 'orchestrator-%'
		GROUP BY application_name`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var app string
		var c connCount
		if err := rows.Scan(&app, &c.total, &c.active); err != nil {
			return err
		}
		m := most[app]
		m.total, m.active = max(m.total, c.total), max(m.active, c.active)
		most[app] = m
	}
	return rows.Err()
}

// treeCPU adds the CPU time of process pid and of every process below it
// to live, by process ID (nanoseconds, from schedstat, as cpuTime).
func treeCPU(pid int, live map[int]time.Duration) error {
	t, err := cpuTime(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // it exited: the postmaster's cutime counts it
	}
	if err != nil {
		return err
	}
	live[pid] = t
	children, err := childrenOf(pid)
	if err != nil {
		return err
	}
	for _, c := range children {
		if err := treeCPU(c, live); err != nil {
			return err
		}
	}
	return nil
}

// childrenOf lists pid's child processes (of any of its threads).
func childrenOf(pid int) ([]int, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				pids = append(pids, c)
			}
		}
	}
	return pids, nil
}

// pinTree sets the CPU affinity of pid, every thread of it and every
// process below it, to cpus; processes it forks later inherit it.
func pinTree(pid int, cpus string) error {
	children, err := childrenOf(pid)
	if err != nil {
		return err
	}
	out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pid)).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such process") {
		return fmt.Errorf("taskset -c %s %d: %w: %s", cpus, pid, err, out)
	}
	for _, c := range children {
		if err := pinTree(c, cpus); err != nil {
			return err
		}
	}
	return nil
}

// reportPostgres prints the PostgreSQL mode's tables and tells whether its
// targets were met.
func reportPostgres(out io.Writer, o options, run pgRun) bool {
	passed := true
	verdict := func(ok bool) string {
		if ok {
			return "PASS"
		}
		passed = false
		return "FAIL"
	}
	fmt.Fprintf(out, "\nPostgreSQL mode: PostgreSQL %s, started by the harness on this machine; orchestrators\n", run.version)
	fmt.Fprintln(out, "with their default settings (DATABASE_MAX_CONNS=10, TASK_AGENT_CONCURRENCY=4), GOMAXPROCS=1.")

	hb := run.hb
	fmt.Fprintf(out, "\nHeartbeats with %d agents (registered in %s in memory, %s on PostgreSQL): one orchestrator in memory,\n",
		o.agents, hb.register[0].Round(time.Millisecond), hb.register[1].Round(time.Millisecond))
	fmt.Fprintf(out, "one on PostgreSQL, both on CPU %s, loaded in turn by wrk -t1 -c%d -d%s (the heartbeat script) on CPU %s;\n",
		serverCPU, o.connections, o.duration, loadCPU)
	fmt.Fprintln(out, "PostgreSQL on either CPU. µs/req: the orchestrator's CPU per heartbeat; DB µs/req: PostgreSQL's.")
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "round\tmemory req/s\tµs/req\tPostgreSQL req/s\tµs/req\tDB µs/req\tratio\t")
	var rps [2][]float64
	var cost [2][]float64
	var dbUS []float64
	for i, p := range hb.rounds {
		for j := range p {
			rps[j], cost[j] = append(rps[j], p[j].rps), append(cost[j], p[j].usPerRequest())
		}
		dbUS = append(dbUS, p[1].dbUSPerRequest())
		fmt.Fprintf(w, "%d\t%.0f\t%.1f\t%.0f\t%.1f\t%.1f\t%.3f\t\n", i+1, p[0].rps, p[0].usPerRequest(),
			p[1].rps, p[1].usPerRequest(), p[1].dbUSPerRequest(), p[1].rps/p[0].rps)
	}
	fmt.Fprintf(w, "median\t%.0f\t%.1f\t%.0f\t%.1f\t%.1f\t%.3f\t\n", median(rps[0]), median(cost[0]),
		median(rps[1]), median(cost[1]), median(dbUS), median(rps[1])/median(rps[0]))
	w.Flush()
	fmt.Fprintf(out, "CPU-bound ceilings from the medians: the orchestrator on PostgreSQL %.0f/s per core, PostgreSQL %.0f/s per core\n",
		1e6/median(cost[1]), 1e6/median(dbUS))
	fmt.Fprintln(out, "(one CPU-second over the CPU per heartbeat: less moved by the machine's other load than req/s).")
	fmt.Fprintf(out, "Peak RSS (VmHWM): memory %.1f MiB, PostgreSQL %.1f MiB; database connections of the PostgreSQL one: at most %d open,\n",
		float64(hb.rss[0])/1024, float64(hb.rss[1])/1024, hb.conns.total)
	fmt.Fprintf(out, "%d running a query at once (pg_stat_activity every %s).\n", hb.conns.active, connectionsInterval)
	if hb.updates.updates > 0 {
		fmt.Fprintf(out, "Agents table during the rounds: %d row updates, %.0f%% heap-only (HOT, no index entry written).\n",
			hb.updates.updates, 100*float64(hb.updates.hot)/float64(hb.updates.updates))
	}
	printStatements(out, "during the rounds", hb.statements)

	fmt.Fprintf(out, "\nSubmit to completed, one task at a time: a fake agent (the bare server's POST /task) on CPU %s registered under\n", loadCPU)
	fmt.Fprintf(out, "%d names; the orchestrators on CPU %s; %d tasks per path after %d of warm-up, in blocks of %d taking turns.\n",
		o.pgFakeAgents, serverCPU, o.tasks, o.dispatchWarmup, o.tasksPerBlock)
	fmt.Fprintf(out, "The POST /tasks paths poll GET /tasks/{id} every %s (a Go sleep: at least that) until the task is terminal;\n", pollPause)
	fmt.Fprintln(out, "recorded: from sending the submission to the completed_at the service recorded (the verdict). Polled: until")
	fmt.Fprintln(out, "the poll that saw it, which adds up to one pause and one GET (information).")
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "path\trecorded p50\tp90\tp50 overhead\tpolled p50\tp90\tp50 overhead\t")
	ref := run.latency[0]
	for i, r := range run.latency {
		if i == 0 {
			fmt.Fprintf(w, "%s\t%s\t%s\t\t\t\t\t\n", r.name, us(r.median()), us(p90(r.latencies)))
			continue
		}
		rec := run.recorded[i-1]
		fmt.Fprintf(w, "%s\t%s\t%s\t+%s\t%s\t%s\t+%s\t\n", r.name, us(medianDuration(rec)), us(p90(rec)),
			us(medianDuration(rec)-ref.median()), us(r.median()), us(p90(r.latencies)), us(r.median()-ref.median()))
	}
	w.Flush()
	if len(run.claim) > 0 {
		fmt.Fprintf(out, "The PostgreSQL path's tasks as they recorded themselves (p50, p90): created to started %s, %s;\n",
			us(medianDuration(run.claim)), us(p90(run.claim)))
		fmt.Fprintf(out, "started to completed %s, %s.\n", us(medianDuration(run.deliver)), us(p90(run.deliver)))
	}
	printStatements(out, "in the tasks' database during these runs", run.latencyStatements)

	fmt.Fprintf(out, "\nSustained throughput: %d tasks submitted by %d clients at once, round-robin over the replicas, timed from\n",
		o.pgTasks, o.pgSubmitters)
	fmt.Fprintln(out, "the first submission to the last completion (counted by orchestrator_tasks_total); every process on either")
	fmt.Fprintln(out, "CPU, the replicas GOMAXPROCS=1. CPU/task: the replicas' CPU time, and PostgreSQL's, per task.")
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "replicas\tsubmitted/s\tcompleted/s\tscaling\treplicas CPU/task\tDB CPU/task\tRSS per replica\tconnections (open/active)\t")
	for i, t := range run.throughput {
		var cpu time.Duration
		var rss, conns []string
		for j := range t.cpu {
			cpu += t.cpu[j]
			rss = append(rss, fmt.Sprintf("%.1f MiB", float64(t.rss[j])/1024))
			conns = append(conns, fmt.Sprintf("%d/%d", t.conns[j].total, t.conns[j].active))
		}
		scaling := ""
		if i > 0 {
			scaling = fmt.Sprintf("%.2f", t.rate()/run.throughput[0].rate())
		}
		fmt.Fprintf(w, "%d\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%s\t\n", t.replicas,
			float64(t.tasks)/t.submit.Seconds(), t.rate(), scaling,
			us(cpu/time.Duration(t.tasks)), us(t.dbCPU/time.Duration(t.tasks)),
			strings.Join(rss, ", "), strings.Join(conns, ", "))
	}
	w.Flush()

	printStatements(out, "in the tasks' database during the two-replica run", run.throughputStatements)

	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(out)
	fmt.Fprintln(w, "PostgreSQL target\tmeasured\ttarget\tverdict\t")
	fmt.Fprintf(w, "heartbeats/s with %d agents, PostgreSQL (median)\t%.0f/s\t>= %.0f/s\t%s\t\n", o.agents, median(rps[1]), pgHeartbeatTarget,
		verdict(median(rps[1]) >= pgHeartbeatTarget))
	over := medianDuration(run.recorded[1]) - ref.median()
	fmt.Fprintf(w, "p50 submit to completed (recorded) over the direct call, PostgreSQL\t+%s\t<= %s\t%s\t\n", us(over), ms(pgOverheadTarget),
		verdict(over <= pgOverheadTarget))
	two := run.throughput[len(run.throughput)-1]
	fmt.Fprintf(w, "tasks/s completed, %d replicas\t%.0f/s\t>= %.0f/s\t%s\t\n", two.replicas, two.rate(), pgThroughputTarget,
		verdict(two.rate() >= pgThroughputTarget))
	w.Flush()
	return passed
}

// printStatements prints PostgreSQL's busiest statements during a part of
// the run.
func printStatements(out io.Writer, during string, stmts []statementStat) {
	fmt.Fprintf(out, "PostgreSQL's statements by execution time %s (pg_stat_statements; execution only,\n", during)
	fmt.Fprintln(out, "not parsing, the protocol or the commit's WAL flush):")
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  calls\tmean\ttotal\tWAL/call\tstatement")
	for _, st := range stmts {
		q := st.query
		if len(q) > 90 {
			q = q[:87] + "..."
		}
		fmt.Fprintf(w, "  %d\t%.0f µs\t%.0f ms\t%d B\t%s\n", st.calls, 1000*st.meanMS, st.total, st.wal/max(st.calls, 1), q)
	}
	w.Flush()
}

func medianDuration(ds []time.Duration) time.Duration {
	return time.Duration(median(seconds(ds)) * float64(time.Second))
}
