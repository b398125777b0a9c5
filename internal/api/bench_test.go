package api_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
)

// discard is a ResponseWriter that keeps nothing, so the benchmarks measure
// the handlers and not a recorder.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

// benchmarkServe serves path with h, clearing the headers between requests
// as net/http does for each response.
func benchmarkServe(b *testing.B, h http.Handler, path string) {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

// bare writes what /live and /ready write, with no middleware: the
// reference the full chain is compared with (hack/bench/bare answers the
// same way).
var bare = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("{}\n"))
})

// probes are the paths the kubelet and load balancers call.
var probes = []string{"/live", "/ready"}

// BenchmarkBare and BenchmarkChain are the handlers alone, no net/http:
// what the middleware, the router and the probe handler cost per request
// on top of writing the answer.
func BenchmarkBare(b *testing.B) { benchmarkServe(b, bare, "/live") }

func BenchmarkChain(b *testing.B) {
	for _, path := range []string{"/live", "/ready", "/health", "/"} {
		b.Run(path, func(b *testing.B) {
			f := newFixtureAt(b, defaultConfig, zapcore.InfoLevel) // as in production
			benchmarkServe(b, f.handler, path)
		})
	}
}

// BenchmarkHTTP serves the probes through net/http's server, the bare
// handler and the service's, over an in-memory connection carrying
// keep-alive requests: net/http's parsing and writing included, the
// network left out. Its allocs/op is the whole server's per request.
func BenchmarkHTTP(b *testing.B) {
	f := newFixtureAt(b, defaultConfig, zapcore.InfoLevel)
	for _, tc := range []struct {
		name    string
		handler http.Handler
		path    string
	}{
		{"bare", bare, "/live"},
		{"/live", f.handler, "/live"},
		{"/ready", f.handler, "/ready"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := startMemServer(b, tc.handler)
			b.ReportAllocs()
			b.ResetTimer()
			s.serve(b, tc.path, b.N)
		})
	}
}

// BenchmarkProbeRatio is the in-process counterpart of make bench's probe
// verdict: it serves each probe through net/http (as BenchmarkHTTP) with
// the bare handler and with the service's, in alternating blocks, and
// reports each one's CPU time per request and their ratio, bare over
// service (1 would be free). CPU time, not wall time: on a shared machine
// the time other processes take the CPU away counts for neither. The
// network is left out, so the ratio is lower than make bench's, where
// every request also costs system calls and a wake-up, alike for both.
func BenchmarkProbeRatio(b *testing.B) {
	const block = 1000 // requests per turn
	f := newFixtureAt(b, defaultConfig, zapcore.InfoLevel)
	for _, path := range probes {
		b.Run(path, func(b *testing.B) {
			servers := [2]*memServer{startMemServer(b, bare), startMemServer(b, f.handler)}
			for _, s := range servers { // warm both up: pools, series, code paths
				s.serve(b, path, block)
			}
			var cpu [2]time.Duration
			n := 0
			b.ResetTimer()
			for n < b.N {
				k := min(block, b.N-n)
				for i, s := range servers {
					before := processCPU(b)
					s.serve(b, path, k)
					cpu[i] += processCPU(b) - before
				}
				n += k
			}
			b.StopTimer()
			bareNs, serviceNs := float64(cpu[0])/float64(n), float64(cpu[1])/float64(n)
			b.ReportMetric(bareNs, "bare-cpu-ns/req")
			b.ReportMetric(serviceNs, "service-cpu-ns/req")
			b.ReportMetric(serviceNs-bareNs, "overhead-cpu-ns/req")
			b.ReportMetric(bareNs/serviceNs, "ratio")
			b.ReportMetric(0, "ns/op") // both servers' wall time together: no use
		})
	}
}

// processCPU is this process's user and system CPU time, every thread
// included.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// memServer is an http.Server fed in-memory connections.
type memServer struct {
	ln   *memListener
	done chan struct{}
}

// startMemServer serves h on in-memory connections until the benchmark ends.
func startMemServer(b *testing.B, h http.Handler) *memServer {
	b.Helper()
	s := &memServer{ln: &memListener{conns: make(chan net.Conn), closed: make(chan struct{})}, done: make(chan struct{})}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 120 * time.Second}
	go func() {
		defer close(s.done)
		_ = srv.Serve(s.ln)
	}()
	b.Cleanup(func() {
		_ = srv.Close()
		<-s.done
	})
	return s
}

// serve sends n keep-alive GETs of path on one connection and waits until
// the server has answered them all and closed it. Any answer other than
// 200 fails the benchmark.
func (s *memServer) serve(b *testing.B, path string, n int) {
	c := &memConn{
		request: []byte("GET " + path + " HTTP/1.1\r\nHost: orchestrator\r\nUser-Agent: kube-probe/1.34\r\n\r\n"),
		left:    n,
		closed:  make(chan struct{}),
	}
	select {
	case s.ln.conns <- c:
	case <-s.done:
		b.Fatal("server stopped")
	}
	<-c.closed
	if bad := c.bad.Load(); bad != nil {
		b.Fatalf("GET %s answered %q", path, *bad)
	}
	if got := c.answers.Load(); got != int64(n) {
		b.Fatalf("GET %s: %d answers to %d requests", path, got, n)
	}
}

// memListener hands out the connections sent on conns.
type memListener struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *memListener) Addr() net.Addr { return memAddr }

var memAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}

// memConn reads as left copies of request, then EOF, and checks that every
// answer written to it is a 200. Its Read never blocks, so net/http's
// background read (which it starts after each request) returns at once.
// net/http never reads from two goroutines at a time; answers are counted
// atomically all the same.
type memConn struct {
	request   []byte
	left      int // requests not yet read in full
	off       int // bytes of the current request already read
	answers   atomic.Int64
	bad       atomic.Pointer[string]
	closed    chan struct{}
	closeOnce sync.Once
}

var status200 = []byte("HTTP/1.1 200 ")

func (c *memConn) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && c.left > 0 {
		k := copy(p[n:], c.request[c.off:])
		n, c.off = n+k, c.off+k
		if c.off == len(c.request) {
			c.off, c.left = 0, c.left-1
		}
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write takes one flush of net/http's buffer: with these small answers,
// one whole response.
func (c *memConn) Write(p []byte) (int, error) {
	if !bytes.HasPrefix(p, status200) {
		line, _, _ := bytes.Cut(p, []byte("\r\n"))
		s := string(line)
		c.bad.CompareAndSwap(nil, &s)
	}
	c.answers.Add(1)
	return len(p), nil
}

func (c *memConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *memConn) LocalAddr() net.Addr              { return memAddr }
func (c *memConn) RemoteAddr() net.Addr             { return memAddr }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
