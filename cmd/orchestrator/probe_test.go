package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/optiinfra/orchestrator/internal/config"
)

// probeEnv runs "orchestrator probe" (no --url) in-process with env.
func probeEnv(env ...string) error {
	return run(context.Background(), []string{"probe", "--timeout", "5s"}, env, io.Discard, io.Discard)
}

// portOf is the port of a service started by runInProcess.
func portOf(t *testing.T, svc *service) string {
	t.Helper()
	_, port, err := net.SplitHostPort(strings.TrimPrefix(svc.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// TestProbeReadsDotEnv: serve applies ./.env, so the probe (Docker's
// HEALTHCHECK runs it in the same working directory) must too.
func TestProbeReadsDotEnv(t *testing.T) {
	svc := runInProcess(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte("PORT="+portOf(t, svc)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	if err := probeEnv("HTTP_HOST=127.0.0.1"); err != nil {
		t.Fatalf("probe with the port only in .env: %v", err)
	}
	// The real environment wins over .env, as for serve.
	if err := probeEnv("HTTP_HOST=127.0.0.1", "PORT=1"); err == nil {
		t.Fatal("probe of port 1 (PORT in the environment over .env) succeeded")
	}
}

// TestProbeDialsTheConfiguredHost: a server bound to one address is not
// reachable on another; the probe used to dial 127.0.0.1 whatever
// HTTP_HOST said.
func TestProbeDialsTheConfiguredHost(t *testing.T) {
	hosts := []string{"127.0.0.2"} // loopback on Linux: all of 127.0.0.0/8
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		hosts = append(hosts, "::1")
	} else {
		t.Logf("no IPv6 loopback here (%v): ::1 not tried", err)
	}
	for _, host := range hosts {
		t.Run(host, func(t *testing.T) {
			svc := runInProcess(t, "HTTP_HOST="+host)
			port := portOf(t, svc)
			if err := probeEnv("HTTP_HOST="+host, "PORT="+port); err != nil {
				t.Fatalf("probe of a server on %s: %v", host, err)
			}
			if err := probeEnv("HTTP_HOST="+host, "ORCHESTRATOR_PORT="+port); err != nil {
				t.Fatalf("probe with the port in ORCHESTRATOR_PORT: %v", err)
			}
		})
	}
}

// TestProbeReadsNoOtherSetting: the probe needs HTTP_HOST and PORT; an
// unreadable token file or any other bad setting is the server's business
// (it refuses to start), not a reason to call a running server unhealthy.
func TestProbeReadsNoOtherSetting(t *testing.T) {
	svc := runInProcess(t)
	missing := filepath.Join(t.TempDir(), "no-such-token-file")
	err := probeEnv("HTTP_HOST=127.0.0.1", "PORT="+portOf(t, svc),
		"AUTH_AGENT_TOKENS_FILE="+missing, "AUTH_OPERATOR_TOKENS=", "SHUTDOWN_TIMEOUT=never", "TASK_RETENTION=1ns")
	if err != nil {
		t.Fatalf("probe with an unreadable token file and bad settings it does not use: %v", err)
	}
}

func TestProbeRefusesWhatItCannotDial(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"PORT=0"}, "PORT=0"},
		{[]string{"PORT=http"}, `PORT (or ORCHESTRATOR_PORT)="http"`},
		{[]string{"PORT=70000"}, `PORT="70000"`},
		{[]string{"ORCHESTRATOR_PORT=0"}, "PORT=0"},
	} {
		t.Run(strings.Join(tc.env, " "), func(t *testing.T) {
			err := probeEnv(tc.env...)
			if exitCode(err) != exitUsage || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("probe = %v (exit %d), want exit 2 and %q", err, exitCode(err), tc.want)
			}
			if tc.want != "PORT=0" && !errors.Is(err, config.ErrInvalid) {
				t.Errorf("probe = %v, want config.ErrInvalid", err)
			}
		})
	}
}

func TestDialHost(t *testing.T) {
	for host, want := range map[string]string{
		"":          "127.0.0.1",
		"0.0.0.0":   "127.0.0.1",
		"::":        "::1",
		"127.0.0.2": "127.0.0.2",
		"::1":       "::1",
		"localhost": "localhost",
		"10.1.2.3":  "10.1.2.3",
	} {
		if got := dialHost(host); got != want {
			t.Errorf("dialHost(%q) = %q, want %q", host, got, want)
		}
	}
}

func TestReadyURL(t *testing.T) {
	t.Chdir(t.TempDir()) // no .env
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "http://127.0.0.1:8080/ready"},
		{map[string]string{"HTTP_HOST": "::", "PORT": "9000"}, "http://[::1]:9000/ready"},
		{map[string]string{"HTTP_HOST": "fe80::1%eth0", "PORT": "9000"}, "http://[fe80::1%25eth0]:9000/ready"},
		{map[string]string{"ORCHESTRATOR_PORT": "tcp://10.96.0.12:8080", "HTTP_HOST": "0.0.0.0"}, "http://127.0.0.1:8080/ready"},
	} {
		got, err := readyURL(context.Background(), tc.env)
		if err != nil || got != tc.want {
			t.Errorf("readyURL(%v) = %q, %v; want %q", tc.env, got, err, tc.want)
		}
	}
}
