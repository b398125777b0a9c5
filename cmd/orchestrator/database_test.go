package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/eventually"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
)

// call sends a JSON request and returns the status and the decoded body.
func call(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func status(t *testing.T, url string) int {
	t.Helper()
	code, _ := call(t, http.MethodGet, url, "")
	return code
}

// With DATABASE_URL, agents outlive the process: a second run finds the
// agent the first registered, and its heartbeats keep getting 200. The
// startup line shows where the database is, never the password.
func TestServeWithDatabaseKeepsAgents(t *testing.T) {
	srv := pgtest.Shared(t)
	dbURL := pgtest.NewDatabase(t)
	env := []string{"DATABASE_URL=" + dbURL, "HEALTH_CHECK_INTERVAL=200ms", "HEALTH_CHECK_TIMEOUT=100ms"}

	first := runInProcess(t, env...)
	code, body := call(t, http.MethodPost, first.base+"/agents/register",
		`{"name":"cost-1","type":"cost","host":"127.0.0.1","port":8001,"capabilities":["analyze"]}`)
	if code != http.StatusCreated {
		t.Fatalf("register = %d %v", code, body)
	}
	id, _ := body["agent_id"].(string)
	eventually.True(t, 20*time.Second, "/ready with the database reachable", func() bool { return status(t, first.base+"/ready") == http.StatusOK })
	_, health := call(t, http.MethodGet, first.base+"/health", "")
	if checks, _ := health["checks"].(map[string]any); checks["database"] == nil {
		t.Errorf("/health has no database check: %v", health["checks"])
	}
	startup := first.logs.find("orchestrator listening")
	line, _ := json.Marshal(startup)
	db, _ := startup["config"].(map[string]any)["database"].(map[string]any)
	if strings.Contains(string(line), srv.Password()) || db["url"] != postgres.Describe(dbURL) || !strings.Contains(db["url"].(string), "127.0.0.1") {
		t.Errorf("startup line's config.database = %v, want the URL without its password", db)
	}
	first.cancel()
	if err := first.wait(t); err != nil {
		t.Fatalf("first run: %v", err)
	}

	second := runInProcess(t, env...)
	if code, body := call(t, http.MethodGet, second.base+"/agents/"+id, ""); code != http.StatusOK || body["name"] != "cost-1" {
		t.Fatalf("GET the agent after a restart = %d %v, want it found", code, body)
	}
	if code, body := call(t, http.MethodPost, second.base+"/agents/"+id+"/heartbeat", `{"status":"healthy"}`); code != http.StatusOK {
		t.Fatalf("heartbeat after a restart = %d %v, want 200", code, body)
	}
	if second.logs.find("database schema migrated") != nil {
		t.Error("the second run migrated again an up-to-date schema")
	}
	if first.logs.find("database schema migrated") == nil {
		t.Error("the first run did not log its migration")
	}
}

// A schema newer than the binary stops it before it listens (exit 1); so
// does one behind it with DATABASE_AUTO_MIGRATE=false, until `migrate up`.
func TestServeChecksTheSchema(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	serve := func(extra ...string) (string, error) {
		var out bytes.Buffer
		env := append([]string{"PORT=0", "HTTP_HOST=127.0.0.1", "DATABASE_URL=" + dbURL}, extra...)
		err := run(ctx, nil, env, &out, io.Discard)
		return out.String(), err
	}
	migrateCmd := func(sub string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, []string{"migrate", sub}, []string{"DATABASE_URL=" + dbURL}, &out, io.Discard)
		return out.String(), err
	}

	logs, err := serve("DATABASE_AUTO_MIGRATE=false")
	if exitCode(err) != exitFailure || !strings.Contains(fmtErr(err), "orchestrator migrate up") || strings.Contains(logs, "orchestrator listening") {
		t.Fatalf("serve on an empty database without auto-migration = %v (exit %d), want exit 1 naming `orchestrator migrate up`, before listening", err, exitCode(err))
	}
	out, err := migrateCmd("status")
	if err != nil || strings.Count(out, "pending") < 2 || !strings.Contains(out, "00001_agents.sql") {
		t.Fatalf("migrate status on an empty database = %v\n%s", err, out)
	}
	out, err = migrateCmd("up")
	if err != nil || !strings.Contains(out, "applied 1\n") || !strings.Contains(out, "schema at version "+strconv.FormatInt(postgres.LatestVersion(), 10)) {
		t.Fatalf("migrate up = %v\n%s", err, out)
	}
	out, err = migrateCmd("up")
	if err != nil || strings.Contains(out, "applied 1\n") || !strings.Contains(out, "(0 applied now)") {
		t.Fatalf("migrate up again = %v\n%s", err, out)
	}
	out, err = migrateCmd("status")
	if err != nil || strings.Contains(out, "pending") || !strings.Contains(out, "applied  00001_agents.sql") {
		t.Fatalf("migrate status after up = %v\n%s", err, out)
	}

	// A newer orchestrator migrated the database: this one must not touch it.
	pool, err := postgres.Open(ctx, postgres.Config{MaxConns: 2, ConnectTimeout: 5 * time.Second}, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true)`, postgres.LatestVersion()+1); err != nil {
		t.Fatal(err)
	}
	for _, auto := range []string{"true", "false"} {
		logs, err := serve("DATABASE_AUTO_MIGRATE=" + auto)
		if !errors.Is(err, postgres.ErrSchemaTooNew) || exitCode(err) != exitFailure || strings.Contains(logs, "orchestrator listening") {
			t.Errorf("serve (auto-migrate %s) on a newer schema = %v (exit %d), want ErrSchemaTooNew, exit 1, before listening", auto, err, exitCode(err))
		}
	}
	for _, sub := range []string{"up", "status"} {
		if _, err := migrateCmd(sub); !errors.Is(err, postgres.ErrSchemaTooNew) || exitCode(err) != exitFailure {
			t.Errorf("migrate %s on a newer schema = %v (exit %d), want ErrSchemaTooNew, exit 1", sub, err, exitCode(err))
		}
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// The migrate command's mistakes: usage and configuration exit 2, a
// database it cannot reach exits 1, and no error shows the password.
func TestMigrateCommandErrors(t *testing.T) {
	ctx := context.Background()
	const password = "s3cr3t-migrate-pass"
	unreachable := "postgres://orchestrator:" + password + "@127.0.0.1:1/orchestrator?connect_timeout=2"
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  []string
		want int
		says string
	}{
		{[]string{"migrate"}, nil, exitUsage, "migrate takes one of"},
		{[]string{"migrate", "down"}, nil, exitUsage, "migrate takes one of"},
		{[]string{"migrate", "up", "extra"}, nil, exitUsage, "migrate takes one of"},
		{[]string{"migrate", "up"}, nil, exitUsage, "no database"},
		{[]string{"migrate", "status"}, []string{"DATABASE_URL_FILE=" + filepath.Join(dir, "missing")}, exitUsage, "DATABASE_URL_FILE"},
		{[]string{"migrate", "status"}, []string{"DATABASE_URL_FILE=" + empty}, exitUsage, "the file is empty"},
		{[]string{"migrate", "up"}, []string{"DATABASE_URL=" + unreachable, "DATABASE_URL_FILE=" + empty}, exitUsage, "set one"},
		{[]string{"migrate", "up"}, []string{"DATABASE_URL=" + unreachable, "DATABASE_MAX_CONNS=1"}, exitUsage, "DATABASE_MAX_CONNS"},
		{[]string{"migrate", "up"}, []string{"DATABASE_URL=" + unreachable, "DATABASE_CONNECT_TIMEOUT=1s"}, exitFailure, "127.0.0.1:1"},
	} {
		t.Run(strings.Join(tc.args[1:], " ")+" "+tc.says, func(t *testing.T) {
			err := run(ctx, tc.args, tc.env, io.Discard, io.Discard)
			if code := exitCode(err); code != tc.want || !strings.Contains(fmtErr(err), tc.says) {
				t.Errorf("exit %d: %v; want exit %d saying %q", code, err, tc.want, tc.says)
			}
			if err != nil && strings.Contains(err.Error(), password) {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}

// A database that is not up yet (the bundled one starting beside the pods
// of a fresh install) is waited for: the process logs that it waits,
// without the password, and serves once the database answers.
func TestServeWaitsForTheDatabase(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	dbURL := srv.NewDatabase(t)
	srv.Stop()

	ctx, cancel := context.WithCancel(context.Background())
	s := &service{logs: newLogLines(), cancel: cancel, done: make(chan struct{})}
	env := []string{"PORT=0", "HTTP_HOST=127.0.0.1", "SHUTDOWN_DELAY=0s", "SHUTDOWN_TIMEOUT=5s", "DATABASE_URL=" + dbURL, "DATABASE_CONNECT_TIMEOUT=1s"}
	go func() { s.err = run(ctx, nil, env, s.logs, io.Discard); close(s.done) }()
	t.Cleanup(func() { cancel(); _ = s.wait(t) })

	waiting := s.logs.await(t, "waiting for the database")
	if line, _ := json.Marshal(waiting); strings.Contains(string(line), srv.Password()) {
		t.Errorf("the waiting line shows the password: %s", line)
	}
	if s.logs.find("orchestrator listening") != nil {
		t.Fatal("listening before the database answered")
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	base := "http://" + s.logs.await(t, "orchestrator listening")["address"].(string)
	eventually.True(t, 20*time.Second, "/ready once the database is up", func() bool { return status(t, base+"/ready") == http.StatusOK })
}

// With DATABASE_URL, coordination records are shared by the replicas and
// outlive them: a batch submitted to one replica is approved through the
// other, deciding it again through the first is 409, and a replica
// started afterwards sees the approval and its plan.
func TestServeWithDatabaseSharesCoordination(t *testing.T) {
	env := []string{"DATABASE_URL=" + pgtest.NewDatabase(t)}
	first, second := runInProcess(t, env...), runInProcess(t, env...)

	code, body := call(t, http.MethodPost, first.base+"/coordination/coordinate",
		`{"customer_id":"acme","auto_approve":false,"recommendations":[{"id":"r1","agent_id":"cost-1","agent_type":"cost",`+
			`"action":"scale_down","risk_level":"medium","priority":1,"confidence":0.9,"estimated_savings":10,"affected_resources":["i-1"]}]}`)
	if code != http.StatusOK {
		t.Fatalf("coordinate through the first replica = %d %v", code, body)
	}
	_, list := call(t, http.MethodGet, second.base+"/coordination/approvals?customer_id=acme", "")
	approvals, _ := list["approvals"].([]any)
	if len(approvals) != 1 {
		t.Fatalf("the second replica lists %v, want the first's approval", list)
	}
	id, _ := approvals[0].(map[string]any)["id"].(string)
	if code, body := call(t, http.MethodPost, second.base+"/coordination/approvals/"+id+"/approve", `{"user_id":"alice"}`); code != http.StatusOK {
		t.Fatalf("approve through the second replica = %d %v", code, body)
	}
	if code, body := call(t, http.MethodPost, first.base+"/coordination/approvals/"+id+"/approve", `{"user_id":"bob"}`); code != http.StatusConflict {
		t.Fatalf("approve again through the first replica = %d %v, want 409", code, body)
	}
	first.cancel()
	second.cancel()
	if err := errors.Join(first.wait(t), second.wait(t)); err != nil {
		t.Fatal(err)
	}

	third := runInProcess(t, env...)
	if code, body := call(t, http.MethodGet, third.base+"/coordination/approvals/"+id, ""); code != http.StatusOK || body["status"] != "approved" || body["approved_by"] != "alice" {
		t.Fatalf("the approval after both replicas stopped = %d %v, want approved by alice", code, body)
	}
	if code, body := call(t, http.MethodGet, third.base+"/coordination/plans?customer_id=acme", ""); code != http.StatusOK || body["count"] != 1.0 {
		t.Fatalf("plans after a restart = %d %v, want the approval's plan", code, body)
	}
}
