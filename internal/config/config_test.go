package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaults(t *testing.T) {
	cfg, err := Load(context.Background(), nil)
	if err != nil {
		t.Fatalf("Load with an empty environment: %v", err)
	}
	s := cfg.Server
	for name, tc := range map[string]struct{ got, want any }{
		"PORT":                     {s.Port, 8080},
		"HTTP_HOST":                {s.Host, ""},
		"SHUTDOWN_DELAY":           {s.ShutdownDelay, 5 * time.Second},
		"SHUTDOWN_TIMEOUT":         {s.ShutdownTimeout, 20 * time.Second},
		"HTTP_READ_HEADER_TIMEOUT": {s.ReadHeaderTimeout, 5 * time.Second},
		"HTTP_READ_TIMEOUT":        {s.ReadTimeout, 30 * time.Second},
		"HTTP_WRITE_TIMEOUT":       {s.WriteTimeout, 30 * time.Second},
		"HTTP_IDLE_TIMEOUT":        {s.IdleTimeout, 120 * time.Second},
		"HTTP_MAX_HEADER_BYTES":    {s.MaxHeaderBytes, 65536},
		"HTTP_MAX_BODY_BYTES":      {cfg.API.MaxBodyBytes, int64(1 << 20)},
		"FAULTS_ENABLED":           {cfg.API.FaultsEnabled, false},
		"LOG_LEVEL":                {cfg.Log.Level, "info"},
		"LOG_FORMAT":               {cfg.Log.Format, "json"},
		"ENVIRONMENT":              {cfg.Environment, "production"},
		"HEALTH_CHECK_INTERVAL":    {cfg.Health.CheckInterval, 10 * time.Second},
		"HEALTH_CHECK_TIMEOUT":     {cfg.Health.CheckTimeout, 2 * time.Second},
	} {
		if tc.got != tc.want {
			t.Errorf("default %s = %v, want %v", name, tc.got, tc.want)
		}
	}
	if s.Address() != ":8080" {
		t.Errorf("Address() = %q, want :8080", s.Address())
	}
}

func TestOverrides(t *testing.T) {
	cfg, err := Load(context.Background(), map[string]string{
		"PORT": "9090", "HTTP_HOST": "127.0.0.1", "SHUTDOWN_DELAY": "1500ms", "LOG_LEVEL": "DEBUG",
		"LOG_FORMAT": "console", "ENVIRONMENT": "staging", "FAULTS_ENABLED": "true", "HTTP_MAX_BODY_BYTES": "2048",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.Address() != "127.0.0.1:9090" || cfg.Server.ShutdownDelay != 1500*time.Millisecond ||
		cfg.Log.Level != "DEBUG" || cfg.Log.Format != "console" || cfg.Environment != "staging" ||
		!cfg.API.FaultsEnabled || cfg.API.MaxBodyBytes != 2048 {
		t.Fatalf("overrides not applied: %+v", cfg)
	}
}

func TestPortAlias(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		wantPort int
		warning  string
	}{
		{"alias used when PORT is unset", map[string]string{"ORCHESTRATOR_PORT": "7000"}, 7000, ""},
		{"PORT wins over the alias", map[string]string{"PORT": "7001", "ORCHESTRATOR_PORT": "7000"}, 7001, ""},
		{"a Kubernetes service link is ignored", map[string]string{"ORCHESTRATOR_PORT": "tcp://10.96.0.12:8080"}, 8080,
			"service link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(context.Background(), tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Server.Port != tc.wantPort {
				t.Errorf("port = %d, want %d", cfg.Server.Port, tc.wantPort)
			}
			joined := strings.Join(cfg.Warnings, "\n")
			if (tc.warning == "") != (joined == "") || !strings.Contains(joined, tc.warning) {
				t.Errorf("warnings = %q, want one containing %q", cfg.Warnings, tc.warning)
			}
		})
	}
}

func TestInvalidValuesNameTheVariable(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"PORT": "http"}, `PORT (or ORCHESTRATOR_PORT)="http": must be a whole number`},
		{map[string]string{"ORCHESTRATOR_PORT": "eighty"}, `PORT (or ORCHESTRATOR_PORT)="eighty": must be a whole number`},
		{map[string]string{"PORT": "70000"}, `PORT="70000": must be a TCP port`},
		{map[string]string{"PORT": "99999999999999999999"}, `PORT (or ORCHESTRATOR_PORT)="99999999999999999999": number out of range`},
		{map[string]string{"SHUTDOWN_DELAY": "5"}, `SHUTDOWN_DELAY="5": must be a duration`},
		{map[string]string{"SHUTDOWN_DELAY": "-1s"}, `SHUTDOWN_DELAY="-1s": must be from 0s to 1h`},
		{map[string]string{"SHUTDOWN_TIMEOUT": "0s"}, `SHUTDOWN_TIMEOUT="0s": must be from 100ms to 1h`},
		{map[string]string{"HTTP_READ_HEADER_TIMEOUT": "soon"}, `HTTP_READ_HEADER_TIMEOUT="soon": must be a duration`},
		{map[string]string{"HTTP_MAX_HEADER_BYTES": "10"}, `HTTP_MAX_HEADER_BYTES="10": must be between`},
		{map[string]string{"HTTP_MAX_BODY_BYTES": "0"}, `HTTP_MAX_BODY_BYTES="0": must be from 1 to 1073741824`},
		{map[string]string{"HTTP_TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"}, `HTTP_TRUSTED_PROXIES="10.0.0.0/8,proxy.local": "proxy.local" is not a CIDR`},
		{map[string]string{"LOG_LEVEL": "verbose"}, `LOG_LEVEL="verbose": must be one of debug, info, warn, error`},
		{map[string]string{"LOG_FORMAT": "xml"}, `LOG_FORMAT="xml": must be json or console`},
		{map[string]string{"FAULTS_ENABLED": "yes please"}, `FAULTS_ENABLED="yes please": must be true or false`},
		{map[string]string{"ENVIRONMENT": "prod env"}, `ENVIRONMENT="prod env": must be`},
		{map[string]string{"TASK_RETENTION": "1ns"}, `TASK_RETENTION="1ns": must be from 1s to 8760h`},
		{map[string]string{"HTTP_MAX_BODY_BYTES": "9223372036854775807"}, `HTTP_MAX_BODY_BYTES="9223372036854775807": must be from 1 to 1073741824`},
		{map[string]string{"HEALTH_CHECK_TIMEOUT": "1m"}, `HEALTH_CHECK_TIMEOUT="1m0s": must be from 10ms to HEALTH_CHECK_INTERVAL (10s)`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			_, err := Load(context.Background(), tc.env)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load(%v) = %v, want ErrInvalid", tc.env, err)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error = %q, want one line containing %q", err, tc.want)
			}
		})
	}
}

// TestTrustedProxies: the chart sets HTTP_TRUSTED_PROXIES to "" by
// default, which trusts no proxy; a list is read as CIDRs.
func TestTrustedProxies(t *testing.T) {
	for value, want := range map[string]string{"": "", "10.0.0.0/24, fd00::/64": "10.0.0.0/24,fd00::/64"} {
		cfg, err := Load(context.Background(), map[string]string{"HTTP_TRUSTED_PROXIES": value})
		if err != nil {
			t.Fatalf("HTTP_TRUSTED_PROXIES=%q: %v", value, err)
		}
		var got []string
		for _, p := range cfg.API.TrustedProxies {
			if p = strings.TrimSpace(p); p != "" {
				got = append(got, p)
			}
		}
		if strings.Join(got, ",") != want {
			t.Errorf("HTTP_TRUSTED_PROXIES=%q read as %q, want %q", value, cfg.API.TrustedProxies, want)
		}
	}
}

// TestEmptyTokenVariablesFailClosed: envconfig reads an empty variable as
// an unset one; Load must tell them apart, since only an unset role is open.
func TestEmptyTokenVariablesFailClosed(t *testing.T) {
	if _, err := Load(context.Background(), map[string]string{}); err != nil {
		t.Fatalf("no token variables: %v, want both roles open", err)
	}
	_, err := Load(context.Background(), map[string]string{"AUTH_OPERATOR_TOKENS": ""})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "AUTH_OPERATOR_TOKENS is set but holds no token") {
		t.Fatalf("AUTH_OPERATOR_TOKENS set to \"\": %v, want ErrInvalid naming it", err)
	}
}

// TestEmptyValuesAreRefused: envconfig decodes an empty number, duration
// or boolean as zero, so PORT= listened on a random port and
// SHUTDOWN_DELAY= dropped the drain, silently.
func TestEmptyValuesAreRefused(t *testing.T) {
	for name, want := range map[string]string{
		"PORT":             `PORT="": must be a whole number (unset it for the default)`,
		"SHUTDOWN_DELAY":   `SHUTDOWN_DELAY="": must be a duration`,
		"TASK_MAX_PENDING": `TASK_MAX_PENDING="": must be a whole number`,
		"FAULTS_ENABLED":   `FAULTS_ENABLED="": must be true or false`,
	} {
		_, err := Load(context.Background(), map[string]string{name: ""})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s set empty: Load = %v, want ErrInvalid saying %q", name, err, want)
		}
	}
	// An empty string setting means what its own Validate says: here,
	// every interface.
	if cfg, err := Load(context.Background(), map[string]string{"HTTP_HOST": ""}); err != nil || cfg.Server.Host != "" {
		t.Errorf("HTTP_HOST set empty: %v, want every interface", err)
	}
}

func TestSeveralInvalidValuesOnOneLine(t *testing.T) {
	_, err := Load(context.Background(), map[string]string{"LOG_LEVEL": "loud", "SHUTDOWN_TIMEOUT": "0s"})
	if err == nil || strings.Contains(err.Error(), "\n") ||
		!strings.Contains(err.Error(), "LOG_LEVEL") || !strings.Contains(err.Error(), "SHUTDOWN_TIMEOUT") {
		t.Fatalf("error = %q, want one line naming both variables", err)
	}
}

func TestDotEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ".env")
	if err := os.WriteFile(path, []byte("# local settings\nPORT=9000\nLOG_LEVEL=debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env, err := WithDotEnv(map[string]string{"LOG_LEVEL": "warn"}, path)
	if err != nil {
		t.Fatal(err)
	}
	if env["PORT"] != "9000" || env["LOG_LEVEL"] != "warn" {
		t.Fatalf("merged env = %v, want PORT from the file and LOG_LEVEL from the real environment", env)
	}

	env, err = WithDotEnv(map[string]string{"A": "1"}, filepath.Join(dir, "missing"))
	if err != nil || env["A"] != "1" {
		t.Fatalf("missing .env: %v, %v; want the environment unchanged", env, err)
	}

	if err := os.WriteFile(path, []byte("PORT='unterminated\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := WithDotEnv(nil, path); !errors.Is(err, ErrInvalid) {
		t.Fatalf("malformed .env: err = %v, want ErrInvalid", err)
	}
}

func TestEnviron(t *testing.T) {
	env := Environ([]string{"A=1", "B=x=y", "EMPTY=", "NOEQUALS"})
	if len(env) != 3 || env["A"] != "1" || env["B"] != "x=y" || env["EMPTY"] != "" {
		t.Fatalf("Environ = %v", env)
	}
}

// FuzzLoad feeds arbitrary values to every variable: Load must either
// succeed with a valid Config or fail with one line naming a variable; it
// must never panic.
func FuzzLoad(f *testing.F) {
	f.Add("8080", "5s", "info", "json", "1048576", "true")
	f.Add("-1", "-5s", "", "XML", "0", "maybe")
	f.Add("tcp://1.2.3.4:80", "1e9h", "\x00", "console\n", "99999999999999999999", "")
	f.Fuzz(func(t *testing.T, port, delay, level, format, body, faults string) {
		cfg, err := Load(context.Background(), map[string]string{
			"ORCHESTRATOR_PORT": port, "SHUTDOWN_DELAY": delay, "LOG_LEVEL": level, "LOG_FORMAT": format,
			"HTTP_MAX_BODY_BYTES": body, "FAULTS_ENABLED": faults,
		})
		if err != nil {
			if !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q: want ErrInvalid on one line", err)
			}
			if !strings.Contains(err.Error(), "=") {
				t.Fatalf("error %q does not name a variable", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load returned a Config that does not validate: %v", err)
		}
	})
}
