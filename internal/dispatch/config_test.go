package dispatch

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	valid := Config{
		AgentConcurrency: 4, MaxPending: 10000, Retention: time.Hour,
		RetryBackoff: 500 * time.Millisecond, RetryBackoffMax: 30 * time.Second, MaxResultBytes: 4 << 20,
		LeaseDuration: 15 * time.Second, PollInterval: 5 * time.Second,
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   []string // what the error says; none when valid
	}{
		{"defaults", func(*Config) {}, nil},
		{"the smallest", func(c *Config) {
			c.AgentConcurrency, c.MaxPending, c.Retention, c.RetryBackoff, c.RetryBackoffMax, c.MaxResultBytes =
				1, 0, time.Second, time.Millisecond, time.Millisecond, 1024
			c.LeaseDuration, c.PollInterval = time.Second, 100*time.Millisecond
		}, nil},
		{"the largest", func(c *Config) {
			c.AgentConcurrency, c.MaxPending, c.Retention, c.RetryBackoff, c.RetryBackoffMax, c.MaxResultBytes =
				10_000, 1_000_000, 365*24*time.Hour, time.Hour, time.Hour, 1<<30
			c.LeaseDuration, c.PollInterval = time.Hour, time.Hour
		}, nil},
		// Renewed every third of it, a lease under a second lapses on a
		// slow commit, and another replica delivers the task a second time.
		{"lease too short", func(c *Config) { c.LeaseDuration = 999 * time.Millisecond }, []string{`TASK_LEASE_DURATION="999ms": must be from 1s to 1h`}},
		{"lease zero", func(c *Config) { c.LeaseDuration = 0 }, []string{"TASK_LEASE_DURATION="}},
		{"lease too long", func(c *Config) { c.LeaseDuration = time.Hour + 1 }, []string{"TASK_LEASE_DURATION="}},
		// A poll of 0 would spin on the database.
		{"poll zero", func(c *Config) { c.PollInterval = 0 }, []string{`TASK_POLL_INTERVAL="0s": must be from 100ms to 1h`}},
		{"poll too long", func(c *Config) { c.PollInterval = time.Hour + 1 }, []string{"TASK_POLL_INTERVAL="}},
		// Run's ticker is Retention/4: under 4ns it was 0 and NewTicker panicked.
		{"retention 1ns", func(c *Config) { c.Retention = time.Nanosecond }, []string{`TASK_RETENTION="1ns": must be from 1s to 8760h`}},
		{"retention 3ns", func(c *Config) { c.Retention = 3 }, []string{"TASK_RETENTION"}},
		{"retention forever", func(c *Config) { c.Retention = math.MaxInt64 }, []string{"TASK_RETENTION"}},
		{"backoff zero", func(c *Config) { c.RetryBackoff = 0 }, []string{`TASK_RETRY_BACKOFF="0s": must be from 1ms to 1h`}},
		{"backoff past an hour", func(c *Config) { c.RetryBackoff, c.RetryBackoffMax = time.Hour+1, 2*time.Hour }, []string{"TASK_RETRY_BACKOFF=", "TASK_RETRY_BACKOFF_MAX="}},
		// backoff shifts RetryBackoff left once per retry: at 2000000h the
		// second retry overflowed into a negative delay, and rand.N panicked.
		{"backoff of centuries", func(c *Config) { c.RetryBackoff, c.RetryBackoffMax = 2_000_000*time.Hour, 2_000_000*time.Hour }, []string{"TASK_RETRY_BACKOFF="}},
		{"max under backoff", func(c *Config) { c.RetryBackoffMax = c.RetryBackoff - 1 }, []string{"TASK_RETRY_BACKOFF_MAX=\"499.999999ms\": must be at least TASK_RETRY_BACKOFF (500ms)"}},
		{"max negative", func(c *Config) { c.RetryBackoffMax = math.MinInt64 }, []string{"TASK_RETRY_BACKOFF_MAX="}},
		{"concurrency zero", func(c *Config) { c.AgentConcurrency = 0 }, []string{`TASK_AGENT_CONCURRENCY="0": must be from 1 to 10000`}},
		{"concurrency huge", func(c *Config) { c.AgentConcurrency = math.MaxInt }, []string{"TASK_AGENT_CONCURRENCY="}},
		{"pending negative", func(c *Config) { c.MaxPending = -1 }, []string{`TASK_MAX_PENDING="-1": must be from 0 to 1000000`}},
		{"pending huge", func(c *Config) { c.MaxPending = math.MaxInt }, []string{"TASK_MAX_PENDING="}},
		{"result too small", func(c *Config) { c.MaxResultBytes = 1023 }, []string{`TASK_MAX_RESULT_BYTES="1023": must be from 1024 to 1073741824`}},
		// The reply is read through LimitReader(MaxResultBytes+1): at the
		// largest int64 that wrapped negative and every reply read as empty.
		{"result largest int64", func(c *Config) { c.MaxResultBytes = math.MaxInt64 }, []string{"TASK_MAX_RESULT_BYTES="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.change(&cfg)
			err := cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want an error saying %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to say %q", err, w)
				}
			}
		})
	}
}

// TestLargestBackoffDoesNotOverflow pins what the limits promise backoff:
// the largest first delay, doubled for every retry a task may have, still
// fits a Duration, so the jittered delay is never negative.
func TestLargestBackoffDoesNotOverflow(t *testing.T) {
	if maxRetryBackoff > math.MaxInt64>>MaxRetriesLimit {
		t.Fatalf("TASK_RETRY_BACKOFF up to %s, doubled %d times, overflows a Duration", maxRetryBackoff, MaxRetriesLimit)
	}
	d := &Dispatcher{cfg: Config{RetryBackoff: maxRetryBackoff, RetryBackoffMax: maxRetryBackoff}}
	for n := 1; n <= MaxRetriesLimit+1; n++ {
		if delay := d.backoff(n); delay < maxRetryBackoff/2 || delay > maxRetryBackoff {
			t.Fatalf("backoff(%d) = %s, want within [%s, %s]", n, delay, maxRetryBackoff/2, maxRetryBackoff)
		}
	}
}
