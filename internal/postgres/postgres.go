// Package postgres keeps the orchestrator's state in PostgreSQL, so that
// several replicas share one agent registry and one task queue and nothing
// is lost when pods come and go. It opens the connection pool
// (github.com/jackc/pgx/v5), applies the schema's versioned migrations
// (embedded, run by github.com/pressly/goose/v3 under an advisory lock),
// and implements the registry's and the dispatcher's stores.
//
// The database URL holds a password: it is never logged, and no error
// this package returns contains it.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/config/bound"
)

// Config says where the database is. With neither URL nor URLFile set the
// orchestrator keeps its state in memory.
type Config struct {
	// URL is a postgres:// URL (or a libpq key=value string).
	URL string `env:"DATABASE_URL"`
	// URLFile is a file holding the URL, such as a mounted Secret's key;
	// it is read at startup, and surrounding whitespace is dropped.
	URLFile string `env:"DATABASE_URL_FILE"`
	// MaxConns bounds each replica's connection pool.
	MaxConns int `env:"DATABASE_MAX_CONNS, default=10"`
	// ConnectTimeout bounds one attempt to connect.
	ConnectTimeout time.Duration `env:"DATABASE_CONNECT_TIMEOUT, default=5s"`
	// AutoMigrate applies pending migrations at startup; with it off,
	// `orchestrator migrate up` must have been run first.
	AutoMigrate bool `env:"DATABASE_AUTO_MIGRATE, default=true"`
}

// Limits of the settings. A replica needs a connection for LISTEN and a
// few for requests and deliveries; past a few hundred a PostgreSQL server
// runs out of its own (max_connections is 100 by default).
const (
	minMaxConns       = 2
	maxMaxConns       = 1000
	minConnectTimeout = 100 * time.Millisecond
	maxConnectTimeout = 5 * time.Minute
)

// Enabled reports whether a database is configured.
func (c Config) Enabled() bool { return c.URL != "" || c.URLFile != "" }

// Validate reports every setting that cannot be used, naming its variable.
// It never repeats the URL: it holds a password.
func (c Config) Validate() error {
	var errs []error
	if c.URL != "" && c.URLFile != "" {
		errs = append(errs, errors.New("DATABASE_URL and DATABASE_URL_FILE are both set: set one"))
	}
	if c.URL != "" {
		if _, err := pgxpool.ParseConfig(c.URL); err != nil {
			errs = append(errs, fmt.Errorf("DATABASE_URL: %s", redact(err.Error(), c.URL)))
		}
	}
	errs = append(errs,
		bound.Int("DATABASE_MAX_CONNS", int64(c.MaxConns), minMaxConns, maxMaxConns),
		bound.Duration("DATABASE_CONNECT_TIMEOUT", c.ConnectTimeout, minConnectTimeout, maxConnectTimeout))
	return errors.Join(errs...)
}

// MarshalLogObject shows where the database is, never the password: the
// URL without it (empty in memory mode), and the file it is read from.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	url := ""
	if c.URL != "" {
		url = Describe(c.URL)
	}
	enc.AddString("url", url)
	enc.AddString("url_file", c.URLFile)
	enc.AddInt("max_conns", c.MaxConns)
	enc.AddDuration("connect_timeout", c.ConnectTimeout)
	enc.AddBool("auto_migrate", c.AutoMigrate)
	return nil
}

// ResolveURL returns the URL, read from URLFile when that is set.
func (c Config) ResolveURL() (string, error) {
	if c.URLFile == "" {
		return c.URL, nil
	}
	b, err := os.ReadFile(c.URLFile)
	if err != nil {
		return "", fmt.Errorf("DATABASE_URL_FILE: %w", err)
	}
	u := strings.TrimSpace(strings.TrimPrefix(string(b), "\uFEFF"))
	if u == "" {
		return "", fmt.Errorf("DATABASE_URL_FILE=%q: the file is empty", c.URLFile)
	}
	if _, err := pgxpool.ParseConfig(u); err != nil {
		return "", fmt.Errorf("DATABASE_URL_FILE=%q: %s", c.URLFile, redact(err.Error(), u))
	}
	return u, nil
}

// Describe is dbURL without its password, for logs: user, host, port and
// database name, or "(unparsable URL)".
func Describe(dbURL string) string {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return "(unparsable URL)"
	}
	cc := cfg.ConnConfig
	u := url.URL{Scheme: "postgres", User: url.User(cc.User), Host: fmt.Sprintf("%s:%d", cc.Host, cc.Port), Path: "/" + cc.Database}
	return u.String()
}

// Open connects to the database at dbURL with a pool of cfg's size and
// checks that it answers. Errors never contain the password; one that
// only says the server cannot be reached now wraps storeerr.ErrUnavailable.
func Open(ctx context.Context, cfg Config, dbURL string) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, errors.New(redact(err.Error(), dbURL))
	}
	pc.MaxConns = int32(cfg.MaxConns) //nolint:gosec // G115: bounded by Validate
	pc.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	if pc.ConnConfig.RuntimeParams == nil {
		pc.ConnConfig.RuntimeParams = map[string]string{}
	}
	if _, ok := pc.ConnConfig.RuntimeParams["application_name"]; !ok {
		pc.ConnConfig.RuntimeParams["application_name"] = "orchestrator"
	}
	password := pc.ConnConfig.Password
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, redactErr(err, password, dbURL)
	}
	pingCtx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		// Unavailable when the server cannot be reached (yet): the caller
		// may wait for it; a refused password or a missing database is not.
		return nil, fmt.Errorf("connecting to %s: %w", Describe(dbURL), unavailable(ctx, redactErr(err, password, dbURL)))
	}
	return pool, nil
}

// redact replaces every secret in s.
func redact(s string, secrets ...string) string {
	for _, secret := range secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "xxxxx")
		}
	}
	return s
}

// redactErr is err with its text redacted, or err itself when nothing
// secret is in it (keeping errors.Is and errors.As working).
func redactErr(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if clean := redact(msg, secrets...); clean != msg {
		return errors.New(clean)
	}
	return err
}

// setAsyncCommit, run first in a transaction, lets its commit return
// before its WAL record is flushed to disk (synchronous_commit off for
// that transaction only). Only writes whose loss a crash of PostgreSQL
// itself (not of a replica) would simply undo use it: heartbeats (the
// next one writes last_seen again), claims, lease renewals and outcomes
// (at-least-once delivery: a lost claim or outcome leaves the task to be
// delivered again, with the same task_id). What a client is told is kept
// (a 201 for a task or an agent, a cancel) waits for the flush as always.
// At most about three wal_writer_delay (600 ms by default) of such writes
// can be lost, and only when the server crashes; the transaction is still
// atomic and consistent, and its effects are visible at once. The waits
// it saves are most of a claim's: the claim lock is no longer held
// through a disk flush.
const setAsyncCommit = `SET LOCAL synchronous_commit TO off`

// asyncCommit begins a transaction that commits asynchronously (see
// setAsyncCommit), in the same round trip as BEGIN.
var asyncCommit = pgx.TxOptions{BeginQuery: "BEGIN; " + setAsyncCommit}
