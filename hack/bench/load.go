package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// result is one measurement of one server.
type result struct {
	rps      float64 // wrk's Requests/sec
	requests int     // requests wrk completed
	// cpu is the server's CPU time (user+system) during the run; share is
	// that over the run's wall time, the fraction of its CPU it got.
	cpu   time.Duration
	share float64
}

// usPerRequest is the server's CPU time per request, in µs.
func (r result) usPerRequest() float64 { return r.cpu.Seconds() * 1e6 / float64(r.requests) }

// measure loads s's endpoint with wrk and takes the server's CPU time
// around it.
func measure(ctx context.Context, s *server, e endpoint, d time.Duration, connections int) (result, error) {
	pid := s.cmd.Process.Pid
	cpu0, err := cpuTime(pid)
	if err != nil {
		return result{}, err
	}
	begin := time.Now()
	r, err := runWrk(ctx, s, e, d, connections)
	if err != nil {
		return result{}, err
	}
	wall := time.Since(begin)
	cpu1, err := cpuTime(pid)
	r.cpu = cpu1 - cpu0
	r.share = r.cpu.Seconds() / wall.Seconds()
	return r, err
}

// sideBySide loads the same endpoint on both servers at once, after a joint
// warm-up: they share serverCPU, so the kernel gives each half of it, and
// whatever else the machine is doing slows both alike. The ratio of their
// throughputs is then the ratio of their costs per request, undisturbed by
// other load in a way that two runs one after the other are not.
func sideBySide(ctx context.Context, servers [2]*server, e endpoint, d time.Duration, connections int) ([2]result, error) {
	var out [2]result
	var errs [2]error
	run := func(load func(i int) error) error {
		var wg sync.WaitGroup
		for i := range servers {
			wg.Go(func() { errs[i] = load(i) })
		}
		wg.Wait()
		return errors.Join(errs[:]...)
	}
	if err := run(func(i int) error {
		return warm(ctx, servers[i], e, connections)
	}); err != nil {
		return out, err
	}
	err := run(func(i int) (err error) {
		out[i], err = measure(ctx, servers[i], e, d, connections)
		return err
	})
	return out, err
}

// cpuTime is the process's CPU time, all threads included, in
// nanoseconds: the sum of the first field of /proc/<pid>/task/*/schedstat.
// /proc/<pid>/stat counts in clock ticks of 10 ms, which on a server that
// gets a few hundred ms of CPU in a run moves the ratio by a few percent.
// A thread that exits between two readings takes its time with it; Go
// servers keep their threads.
func cpuTime(pid int) (time.Duration, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, t := range tasks {
		stat, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread exited after ReadDir
		}
		if err != nil {
			return 0, err
		}
		onCPU, _, _ := strings.Cut(string(stat), " ")
		ns, err := strconv.ParseInt(onCPU, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: %q: %w", dir, t.Name(), stat, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// errNoRequests is a wrk run in which no request completed.
var errNoRequests = errors.New("no requests completed")

// warm loads s's endpoint for the warm-up time, its figures discarded. A
// warm-up in which no request completed is not an error: this shared
// machine sometimes stalls the load CPU for a second or more, and the
// measured run that follows still fails if that happens to it.
func warm(ctx context.Context, s *server, e endpoint, connections int) error {
	_, err := runWrk(ctx, s, e, warmup, connections)
	if errors.Is(err, errNoRequests) {
		progress("warm-up of " + s.name + " " + e.path + ": no request completed (the machine stalled?); going on")
		return nil
	}
	return err
}

var (
	rpsLine       = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	requestsLine  = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	socketErrLine = regexp.MustCompile(`(?m)^\s*Socket errors:.*$`)
	non2xxLine    = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses:.*$`)
)

// runWrk loads s's endpoint for d with keep-alive connections from one wrk
// thread pinned to loadCPU: GETs of its path, or the requests its script
// makes. Any socket error or error status fails the run. wrk's request
// timeout is raised from 2s to 10s so that a stall of the shared machine is
// not taken for a failing server.
func runWrk(ctx context.Context, s *server, e endpoint, d time.Duration, connections int) (result, error) {
	args := []string{"-c", loadCPU, "wrk",
		"-t1", "-c" + strconv.Itoa(connections), "-d" + strconv.Itoa(int(d.Seconds())) + "s", "--timeout", "10s"}
	url := s.url(e.path)
	if e.script != "" {
		args, url = append(args, "-s", e.script), s.url("/")
	}
	cmd := exec.CommandContext(ctx, "taskset", append(args, url)...)
	cmd.SysProcAttr = childAttr()
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		return result{}, fmt.Errorf("wrk %s: %w\n%s", url, err, text)
	}
	for _, bad := range []*regexp.Regexp{socketErrLine, non2xxLine} {
		if line := bad.FindString(text); line != "" {
			return result{}, fmt.Errorf("wrk %s: %s", url, strings.TrimSpace(line))
		}
	}
	n := requestsLine.FindStringSubmatch(text)
	m := rpsLine.FindStringSubmatch(text)
	if n == nil || m == nil || n[1] == "0" {
		return result{}, fmt.Errorf("wrk %s: %w:\n%s", url, errNoRequests, text)
	}
	var r result
	r.requests, _ = strconv.Atoi(n[1])
	r.rps, err = strconv.ParseFloat(m[1], 64)
	return r, err
}
