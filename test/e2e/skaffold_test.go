//go:build e2e

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
)

// skaffoldNamespace is where skaffold.yaml deploys the chart.
const skaffoldNamespace = "orchestrator"

// TestSkaffold runs the project's skaffold.yaml the way a developer does:
// `skaffold run`, then a short `skaffold dev` in which a source change is
// rebuilt and redeployed. It works on a copy of the repository, so the
// change never touches the checkout.
func TestSkaffold(t *testing.T) {
	if env("E2E_SKAFFOLD", "run") == "skip" {
		t.Skip("E2E_SKAFFOLD=skip")
	}
	work := copyRepository(t)
	var profile []string
	if p := os.Getenv("E2E_SKAFFOLD_PROFILE"); p != "" {
		profile = []string{"--profile=" + p}
	}
	extra := append(profile, strings.Fields(os.Getenv("E2E_SKAFFOLD_ARGS"))...)
	t.Cleanup(func() {
		_, _ = tryCmd(3*time.Minute, "kubectl", "delete", "namespace", skaffoldNamespace, "--wait=true", "--timeout=150s")
	})

	t.Run("skaffold run", func(t *testing.T) {
		started := time.Now()
		run := exec.Command("skaffold", append([]string{"run", "--status-check=true"}, extra...)...)
		run.Dir = work
		if out, err := run.CombinedOutput(); err != nil {
			t.Fatalf("skaffold run: %v\n%s", err, out)
		}
		t.Logf("skaffold run (build, push or load, helm install) took %s", time.Since(started).Round(time.Second))
		if out := cmd(t, 4*time.Minute, "helm", "test", "orchestrator", "--namespace", skaffoldNamespace, "--timeout", "3m"); !strings.Contains(out, "Succeeded") {
			t.Fatalf("helm test after skaffold run:\n%s", out)
		}
		base := portForward(t, skaffoldNamespace, "service/orchestrator")
		if code, body := get(t, newHTTPClient(), "GET", base+"/health"); code != 200 {
			t.Fatalf("GET /health = %d %s", code, body)
		}
		delete := exec.Command("skaffold", append([]string{"delete"}, profile...)...)
		delete.Dir = work
		if out, err := delete.CombinedOutput(); err != nil {
			t.Fatalf("skaffold delete: %v\n%s", err, out)
		}
	})

	t.Run("skaffold dev redeploys a change", func(t *testing.T) {
		dev := startSkaffoldDev(t, work, extra)
		// Deployed, and watching: a change made earlier could be missed.
		dev.await(t, "Watching for changes", 1, 10*time.Minute)
		first := deployedImage(t)

		// A source change: Skaffold rebuilds the image and rolls the pods.
		file := filepath.Join(work, "internal", "buildinfo", "buildinfo.go")
		f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = f.WriteString("\n// A change made by the e2e test's skaffold dev cycle.\n")
		f.Close()
		changed := time.Now()
		dev.await(t, "Deployments stabilized", 2, 10*time.Minute)
		second := deployedImage(t)
		if second == first {
			t.Fatalf("after the change the Deployment still runs %s", first)
		}
		t.Logf("skaffold dev: change redeployed in %s (%s -> %s)", time.Since(changed).Round(time.Second), first, second)
		dev.stop(t)
	})
}

// deployedImage is the image of the Deployment skaffold.yaml deploys, once
// its rollout is complete.
func deployedImage(t *testing.T) string {
	t.Helper()
	kubectl(t, skaffoldNamespace, "rollout", "status", "deployment/orchestrator", "--timeout=3m")
	var d appsv1.Deployment
	getJSON(t, skaffoldNamespace, &d, "deployment", "orchestrator")
	return d.Spec.Template.Spec.Containers[0].Image
}

// copyRepository copies the tracked files into a fresh git repository
// (skaffold.yaml tags images by commit).
func copyRepository(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	files := strings.Split(strings.TrimRight(cmd(t, time.Minute, "git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"), "\x00"), "\x00")
	for _, rel := range files {
		src, dst := filepath.Join(root, rel), filepath.Join(work, rel)
		info, err := os.Lstat(src)
		if err != nil {
			continue // deleted in the working tree
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"init", "-q"},
		{"add", "-A"},
		{"-c", "user.name=e2e", "-c", "user.email=e2e@localhost", "commit", "-q", "-m", "e2e copy"},
	} {
		cmd(t, time.Minute, "git", append([]string{"-C", work}, args...)...)
	}
	return work
}

// skaffoldDev is a running `skaffold dev`.
type skaffoldDev struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	output  bytes.Buffer
	changed chan struct{}
	done    chan struct{}
}

func startSkaffoldDev(t *testing.T, dir string, extra []string) *skaffoldDev {
	t.Helper()
	c := exec.Command("skaffold", append([]string{"dev", "--status-check=true", "--cleanup=true"}, extra...)...)
	c.Dir = dir
	pipe, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.Stderr = c.Stdout
	d := &skaffoldDev{cmd: c, changed: make(chan struct{}, 1), done: make(chan struct{})}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(d.done)
		s := bufio.NewScanner(pipe)
		for s.Scan() {
			d.mu.Lock()
			d.output.WriteString(s.Text() + "\n")
			d.mu.Unlock()
			select {
			case d.changed <- struct{}{}:
			default:
			}
		}
		_ = c.Wait()
	}()
	t.Cleanup(func() { d.stop(t) })
	return d
}

// await waits until skaffold dev has printed line n times.
func (d *skaffoldDev) await(t *testing.T, line string, n int, limit time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		d.mu.Lock()
		out := d.output.String()
		d.mu.Unlock()
		if strings.Count(out, line) >= n {
			return
		}
		select {
		case <-d.changed:
		case <-d.done:
			t.Fatalf("skaffold dev exited before %q #%d:\n%s", line, n, out)
		case <-ctx.Done():
			t.Fatalf("skaffold dev: no %q #%d within %s:\n%s", line, n, limit, out)
		}
	}
}

// stop interrupts skaffold dev, which then deletes what it deployed.
func (d *skaffoldDev) stop(t *testing.T) {
	t.Helper()
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-d.done:
	case <-time.After(3 * time.Minute):
		_ = d.cmd.Process.Kill()
		<-d.done
		t.Error("skaffold dev did not stop within 3 minutes of SIGINT")
	}
}
