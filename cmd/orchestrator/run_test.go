package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/postgres/pgtest"
	"github.com/optiinfra/orchestrator/internal/server"

	"github.com/optiinfra/orchestrator/internal/eventually"
)

func TestMain(m *testing.M) {
	// The tests with a database share one PostgreSQL server, removed
	// once they have run.
	code := buildBinary(pgtest.Wrap(m))
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left running: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// logLines collects JSON log lines written to it and tells when one with a
// given message arrives.
type logLines struct {
	mu      sync.Mutex
	lines   []map[string]any
	partial bytes.Buffer
	changed chan struct{}
}

func newLogLines() *logLines { return &logLines{changed: make(chan struct{}, 1)} }

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial.Write(p)
	for {
		line, err := l.partial.ReadBytes('\n')
		if err != nil {
			l.partial.Write(line) // keep the incomplete line for later
			break
		}
		var entry map[string]any
		if json.Unmarshal(line, &entry) == nil {
			l.lines = append(l.lines, entry)
		}
	}
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

// find returns the first line with the message, if any.
func (l *logLines) find(message string) map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.lines {
		if e["message"] == message {
			return e
		}
	}
	return nil
}

// all returns every line with the message.
func (l *logLines) all(message string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, e := range l.lines {
		if e["message"] == message {
			out = append(out, e)
		}
	}
	return out
}

// await waits for a line with the message.
func (l *logLines) await(t *testing.T, message string) map[string]any {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		if e := l.find(message); e != nil {
			return e
		}
		select {
		case <-l.changed:
		case <-timeout:
			t.Fatalf("no log line %q within 20s", message)
		}
	}
}

// service is run() going in-process on a free loopback port.
type service struct {
	base   string
	logs   *logLines
	cancel context.CancelFunc // starts the drain, like SIGTERM
	done   chan struct{}
	err    error // what run returned, once done is closed
}

// wait returns what run returned, failing the test if it takes too long.
func (s *service) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-s.done:
		return s.err
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return")
		return nil
	}
}

// runInProcess starts run() and waits until it listens; it stops when the
// test ends.
func runInProcess(t *testing.T, env ...string) *service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{logs: newLogLines(), cancel: cancel, done: make(chan struct{})}
	env = append([]string{"PORT=0", "HTTP_HOST=127.0.0.1", "SHUTDOWN_DELAY=0s", "SHUTDOWN_TIMEOUT=5s"}, env...)
	go func() { s.err = run(ctx, nil, env, s.logs, io.Discard); close(s.done) }()
	t.Cleanup(func() { cancel(); _ = s.wait(t) })
	s.base = "http://" + s.logs.await(t, "orchestrator listening")["address"].(string)
	return s
}

func TestRunServesAndStopsCleanly(t *testing.T) {
	svc := runInProcess(t)
	base, logs := svc.base, svc.logs
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, path := range []string{"/", "/version", "/live", "/ready", "/health", "/metrics"} {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d %s", path, resp.StatusCode, body)
		}
		if path == "/metrics" {
			for _, want := range []string{"go_goroutines", "process_resident_memory_bytes", "orchestrator_build_info{",
				`orchestrator_health_check_up{check="draining",kind="readiness"} 1`} {
				if !strings.Contains(string(body), want) {
					t.Errorf("/metrics lacks %s", want)
				}
			}
		}
	}

	startup := logs.find("orchestrator listening")
	for _, key := range []string{"timestamp", "level", "caller", "version", "commit", "config"} {
		if _, ok := startup[key]; !ok {
			t.Errorf("startup line lacks %q: %v", key, startup)
		}
	}
	cfg, _ := startup["config"].(map[string]any)
	if srv, _ := cfg["server"].(map[string]any); srv["shutdown_delay"] != "0s" {
		t.Errorf("startup line config.server = %v, want the effective settings", cfg["server"])
	}

	svc.cancel()
	if err := svc.wait(t); err != nil {
		t.Fatalf("run after cancel = %v, want nil", err)
	}
	if logs.find("stopped") == nil {
		t.Error("no \"stopped\" line after a clean shutdown")
	}
}

func TestRunRejectsInvalidConfigBeforeListening(t *testing.T) {
	// Hold a port: if run listened before validating, it would fail with
	// "address already in use" instead of the configuration error.
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, port, _ := net.SplitHostPort(held.Addr().String())

	var stdout bytes.Buffer
	err = run(context.Background(), nil, []string{"HTTP_HOST=127.0.0.1", "PORT=" + port, "SHUTDOWN_TIMEOUT=never"},
		&stdout, io.Discard)
	if !errors.Is(err, config.ErrInvalid) || exitCode(err) != exitUsage {
		t.Fatalf("run = %v (exit %d), want a configuration error and exit 2", err, exitCode(err))
	}
	if !strings.Contains(err.Error(), `SHUTDOWN_TIMEOUT="never"`) {
		t.Errorf("error %q does not name the variable and its value", err)
	}
	if stdout.Len() != 0 {
		t.Errorf("run logged before validating its configuration: %s", stdout.String())
	}
}

func TestRunCommands(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		wantCode int
		wantOut  string
	}{
		{[]string{"version"}, exitOK, "orchestrator "},
		{[]string{"--help"}, exitOK, "Usage:"},
		{[]string{"frobnicate"}, exitUsage, ""},
		{[]string{"serve", "extra"}, exitUsage, ""},
		{[]string{"probe", "--bogus"}, exitUsage, ""},
		{[]string{"probe", "--url", "http://127.0.0.1:1/ready", "stray"}, exitUsage, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout bytes.Buffer
			err := run(context.Background(), tc.args, nil, &stdout, io.Discard)
			if code := exitCode(err); code != tc.wantCode {
				t.Fatalf("exit code %d (%v), want %d", code, err, tc.wantCode)
			}
			if !strings.Contains(stdout.String(), tc.wantOut) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tc.wantOut)
			}
		})
	}
}

func TestProbeCommand(t *testing.T) {
	svc := runInProcess(t, "SHUTDOWN_DELAY=2s")
	base := svc.base
	probe := func(urls ...string) error {
		args := []string{"probe", "--timeout", "2s"}
		for _, u := range urls {
			args = append(args, "--url", u)
		}
		return run(context.Background(), args, nil, io.Discard, io.Discard)
	}
	if err := probe(base+"/ready", base+"/health"); err != nil {
		t.Fatalf("probe of a ready server: %v", err)
	}
	if err := probe(base + "/nope"); err == nil || exitCode(err) != exitFailure {
		t.Fatalf("probe of a 404: %v, want exit 1", err)
	}
	if err := probe("http://127.0.0.1:1/ready"); err == nil || exitCode(err) != exitFailure {
		t.Fatalf("probe of a closed port: %v, want exit 1", err)
	}

	svc.cancel() // draining for 2s: /ready fails, /live does not
	eventually.True(t, 20*time.Second, "the probe of /ready to fail while draining", func() bool { return probe(base+"/ready") != nil })
	if err := probe(base + "/live"); err != nil {
		t.Fatalf("probe of /live while draining: %v", err)
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{errors.New("listen: address in use"), exitFailure},
		{config.ErrInvalid, exitUsage},
		{errUsage, exitUsage},
		{server.ErrDrainTimeout, exitDrainTimeout},
		{fmt.Errorf("%w: 2 task(s)", dispatch.ErrDrainTimeout), exitDrainTimeout},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// scanLines is used by the process tests to read a child's output.
func scanLines(r io.Reader, w io.Writer) {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		_, _ = w.Write(append(s.Bytes(), '\n'))
	}
}
