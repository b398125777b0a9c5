package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// server is one server process, started pinned to serverCPU.
type server struct {
	name string
	port int
	cmd  *exec.Cmd
	out  bytes.Buffer // its stdout and stderr, shown when something fails
	done chan struct{}
}

// procs holds every server process started and not yet stopped, so that
// stopAll can end them on any exit path.
var procs struct {
	sync.Mutex
	running map[*server]bool
}

// startServer starts bin on a free loopback port, pinned to serverCPU, with
// GOMAXPROCS=1 and the orchestrator's settings in an otherwise clean
// environment (a few Go runtime variables pass through, for experiments).
// dir is its working directory (kept free of a .env file).
func startServer(name, bin, dir string) (*server, error) {
	return startServerOn(serverCPU, name, bin, dir)
}

// startServerOn is startServer on the CPUs cpus (a taskset list), with the
// settings env (NAME=value) added to the environment.
func startServerOn(cpus, name, bin, dir string, env ...string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &server{name: name, port: port, done: make(chan struct{})}
	s.cmd = exec.Command("taskset", "-c", cpus, bin)
	s.cmd.Dir = dir
	s.cmd.Env = append([]string{
		"PORT=" + strconv.Itoa(port),
		"HTTP_HOST=127.0.0.1",
		"LOG_LEVEL=info",
		"SHUTDOWN_DELAY=0s",
		"GOMAXPROCS=1",
	}, env...)
	for _, v := range []string{"GOGC", "GOMEMLIMIT", "GODEBUG"} {
		if val, ok := os.LookupEnv(v); ok {
			s.cmd.Env = append(s.cmd.Env, v+"="+val)
		}
	}
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	s.cmd.SysProcAttr = childAttr()
	procs.Lock()
	defer procs.Unlock()
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	if procs.running == nil {
		procs.running = map[*server]bool{}
	}
	procs.running[s] = true
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	return s, nil
}

// childAttr puts a child in its own process group, so that Ctrl-C reaches
// only the harness, which then stops it; and kills it if the harness dies.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func (s *server) url(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(s.port) + path
}

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits for the exit, killing the process after 5s.
// It fails unless the process exited 0 on that SIGTERM.
func (s *server) stop() error {
	procs.Lock()
	delete(procs.running, s)
	procs.Unlock()
	if s.exited() {
		return fmt.Errorf("%s exited early (%v); output:\n%s", s.name, s.cmd.ProcessState, s.out.String())
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("%s did not exit within 5s of SIGTERM; killed", s.name)
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("%s exited with %v after SIGTERM; output:\n%s", s.name, s.cmd.ProcessState, s.out.String())
	}
	return nil
}

// stopAll stops every server still running.
func stopAll() {
	procs.Lock()
	var all []*server
	for s := range procs.running {
		all = append(all, s)
	}
	procs.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Go(func() { _ = s.stop() })
	}
	wg.Wait()
}

// startToReady starts bin and returns the time from just before the fork to
// the first 200 from its /ready. It stops the process before returning.
func startToReady(ctx context.Context, name, bin, dir string) (time.Duration, error) {
	begin := time.Now()
	s, err := startServer(name, bin, dir)
	if err != nil {
		return 0, err
	}
	took, err := waitReady(ctx, s, begin)
	if err != nil {
		_ = s.stop()
		return 0, err
	}
	return took, s.stop()
}

// waitReady polls s's /ready, a new connection every 200µs or so, until it
// answers 200, and returns the time since begin.
func waitReady(ctx context.Context, s *server, begin time.Time) (time.Duration, error) {
	client := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true},
		Timeout:   time.Second,
	}
	for {
		if resp, err := client.Get(s.url("/ready")); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(begin), nil
			}
		}
		switch took := time.Since(begin); {
		case ctx.Err() != nil:
			return 0, ctx.Err()
		case s.exited():
			return 0, fmt.Errorf("%s exited (%v) before /ready answered 200; output:\n%s", s.name, s.cmd.ProcessState, s.out.String())
		case took > 5*time.Second:
			return 0, fmt.Errorf("%s: /ready not 200 after %s", s.name, took.Round(time.Millisecond))
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// peakRSS reads the process's high-water resident set size (VmHWM), in kB.
func peakRSS(pid int) (int, error) {
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, errors.New("no VmHWM in /proc/" + strconv.Itoa(pid) + "/status")
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
