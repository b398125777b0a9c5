//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// loadClient sends GET requests to one URL back to back and counts what
// happens to them. The two kinds matter differently during a rollout:
//
//   - newConnections opens a TCP connection per request, so each request is
//     routed afresh by kube-proxy: it fails if a request lands on a pod that
//     no longer accepts connections while it is still an endpoint.
//   - keepAlive reuses its connections: a connection opened to a pod before
//     the pod left the endpoints keeps reaching it, so it fails if the pod
//     closes the connection under it or stops without telling it.
type loadClient struct {
	name   string
	url    string
	client *http.Client
	// every is the pace: a steady stream, not a flood, so the clients do
	// not starve the node they measure (this suite may share its CPUs).
	every time.Duration

	mu       sync.Mutex
	sent     int
	failures []failure
}

type failure struct {
	at  time.Time
	err string
}

func newLoadClient(name, url string, keepAlive bool) *loadClient {
	transport := &http.Transport{
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		Proxy:               nil, // only ever the cluster under test
	}
	return &loadClient{name: name, url: url, client: &http.Client{Transport: transport, Timeout: 10 * time.Second},
		every: 4 * time.Millisecond}
}

// run sends requests until ctx ends, one every l.every at most (about 250
// a second each).
func (l *loadClient) run(ctx context.Context) {
	pace := time.NewTicker(l.every)
	defer pace.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return
		case <-pace.C:
		}
		err := l.once(ctx)
		if ctx.Err() != nil {
			return // a request cut short by the end of the run is not a failure
		}
		l.mu.Lock()
		l.sent++
		if err != nil {
			l.failures = append(l.failures, failure{at: time.Now(), err: err.Error()})
		}
		l.mu.Unlock()
	}
	l.client.CloseIdleConnections()
}

func (l *loadClient) once(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.url, nil)
	if err != nil {
		return err
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// result is what one client saw.
func (l *loadClient) result() (sent int, failures []failure) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent, append([]failure(nil), l.failures...)
}

// load runs both kinds of client against url until stop is called.
type load struct {
	clients []*loadClient
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func startLoad(url string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{
		clients: []*loadClient{
			newLoadClient("new connection per request", url, false),
			newLoadClient("keep-alive", url, true),
		},
		cancel: cancel,
	}
	for _, c := range l.clients {
		l.wg.Go(func() { c.run(ctx) })
	}
	return l
}

func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}
