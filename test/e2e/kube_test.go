//go:build e2e

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// cmd runs a command line tool and returns its standard output; the test
// fails with the tool's error output when it fails.
func cmd(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := tryCmd(timeout, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// tryCmd runs a command and returns its standard output, or an error that
// carries its error output.
func tryCmd(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s%s", name, strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// kubectl runs kubectl in the namespace (empty: none given).
func kubectl(t *testing.T, ns string, args ...string) string {
	t.Helper()
	if ns != "" {
		args = append([]string{"--namespace", ns}, args...)
	}
	return cmd(t, 5*time.Minute, "kubectl", args...)
}

// getJSON decodes `kubectl get ... -o json` into v.
func getJSON(t *testing.T, ns string, v any, args ...string) {
	t.Helper()
	out := kubectl(t, ns, append(append([]string{"get"}, args...), "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decoding kubectl get %v: %v", args, err)
	}
}

// createNamespace makes a namespace that enforces the "restricted" Pod
// Security Standard and deletes it when the test ends.
func createNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e6)
	kubectl(t, "", "create", "namespace", ns)
	t.Cleanup(func() {
		if _, err := tryCmd(3*time.Minute, "kubectl", "delete", "namespace", ns, "--wait=true", "--timeout=150s"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	kubectl(t, "", "label", "namespace", ns,
		"pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest")
	return ns
}

// orchestratorPort is the container and Service port the chart uses.
const orchestratorPort = 8080

// portForward runs `kubectl port-forward target :8080` and returns the
// local base URL; the forward stops when the test ends.
func portForward(t *testing.T, ns, target string) string {
	t.Helper()
	return portForwardTo(t, ns, target, orchestratorPort)
}

// portForwardTo is portForward to another port of the target.
func portForwardTo(t *testing.T, ns, target string, port int) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := exec.CommandContext(ctx, "kubectl", "--namespace", ns, "port-forward", target, fmt.Sprintf(":%d", port))
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	ports := make(chan string, 1)
	go func() {
		defer close(done)
		forwarding := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) ->`)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if m := forwarding.FindStringSubmatch(s.Text()); m != nil {
				select {
				case ports <- m[1]:
				default:
				}
			}
		}
		_ = c.Wait()
	}()
	select {
	case p := <-ports:
		return "http://127.0.0.1:" + p
	case <-time.After(30 * time.Second):
		t.Fatalf("kubectl port-forward %s did not start: %s", target, stderr.String())
		return ""
	}
}

// newHTTPClient talks to the cluster under test only, never through a proxy.
func newHTTPClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
}

// get fetches url and returns the status and body.
func get(t *testing.T, client *http.Client, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// podLife is what the watcher saw of one pod, in this machine's clock:
// Kubernetes timestamps have a one-second resolution, too coarse to measure
// a start-up that should take about a second.
type podLife struct {
	name                string
	created, ready      time.Time
	deleting, gone      time.Time
	exitCode            *int32
	exitReason          string
	gracePeriodSeconds  int64
	terminationFinished time.Time
}

// podWatcher follows the pods of a namespace with `kubectl get pods --watch`.
type podWatcher struct {
	mu   sync.Mutex
	pods map[string]*podLife
	stop func()
}

func watchPods(t *testing.T, ns, selector string) *podWatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := exec.CommandContext(ctx, "kubectl", "--namespace", ns, "get", "pods", "--selector", selector,
		"--watch", "--output-watch-events", "-o", "json")
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	w := &podWatcher{pods: map[string]*podLife{}}
	done := make(chan struct{})
	w.stop = func() { cancel(); <-done }
	t.Cleanup(w.stop)
	go func() {
		defer close(done)
		dec := json.NewDecoder(stdout)
		for {
			var ev struct {
				Type   string     `json:"type"`
				Object corev1.Pod `json:"object"`
			}
			if err := dec.Decode(&ev); err != nil {
				_ = c.Wait()
				return
			}
			w.observe(ev.Type, &ev.Object, time.Now())
		}
	}()
	return w
}

func (w *podWatcher) observe(event string, pod *corev1.Pod, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p, ok := w.pods[pod.Name]
	if !ok {
		p = &podLife{name: pod.Name, created: now}
		if age := now.Sub(pod.CreationTimestamp.Time); age > 2*time.Second {
			p.created = time.Time{} // it existed before the watch began: no start-up figure
		}
		w.pods[pod.Name] = p
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.ready.IsZero() {
			p.ready = now
		}
	}
	if pod.DeletionTimestamp != nil && p.deleting.IsZero() {
		p.deleting = now
		if pod.DeletionGracePeriodSeconds != nil {
			p.gracePeriodSeconds = *pod.DeletionGracePeriodSeconds
		}
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == "orchestrator" && cs.State.Terminated != nil && p.exitCode == nil {
			code := cs.State.Terminated.ExitCode
			p.exitCode, p.exitReason = &code, cs.State.Terminated.Reason
			p.terminationFinished = now
		}
	}
	if event == "DELETED" && p.gone.IsZero() {
		p.gone = now
	}
}

// snapshot copies what the watcher saw.
func (w *podWatcher) snapshot() map[string]podLife {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]podLife, len(w.pods))
	for name, p := range w.pods {
		out[name] = *p
	}
	return out
}

// env returns the environment variable or a default.
func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
