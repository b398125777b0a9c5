// Package pgtest starts a real PostgreSQL server for tests: Debian's
// postgresql package (make deps installs it), initdb into a temporary
// directory, a free port on 127.0.0.1, torn down on every path.
//
// A test binary shares one server; each test gets a database of its own:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		url := pgtest.NewDatabase(t) // postgres://... of an empty database
//		...
//	}
//
// Tests that stop and restart the server, or kill it, start one of their
// own with Start. The server dies with the test binary whatever happens to
// it (a parent-death signal), and Main or Cleanup removes its files.
// Programs that are not tests (hack/bench) start one with Launch and
// remove it with Destroy.
//
// A missing PostgreSQL fails the test: it is never skipped.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options tune a server. The zero value suits tests: fsync off, which
// loses nothing unless the machine itself crashes (a killed server's
// writes are in the page cache), and makes commits cheap.
type Options struct {
	// Durable keeps fsync and synchronous_commit on, as in production;
	// benchmarks that compare with PostgreSQL use it.
	Durable bool
	// Settings are extra postgresql.conf lines (name = value).
	Settings []string
}

// Server is a PostgreSQL server this process started.
type Server struct {
	dir      string // owns data, socket and log
	port     int
	password string
	opts     Options
	cred     *syscall.Credential // non-nil when running as root

	mu  sync.Mutex
	cmd *exec.Cmd
	dbs atomic.Int64
}

// User is the superuser every URL names.
const User = "orchestrator_test"

// Start starts a server of the test's own, stopped and removed when the
// test ends.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := Launch(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Destroy)
	return s
}

// Launch starts a server for a program that is not a test: initdb into a
// new temporary directory, then postgres on a free port of 127.0.0.1. The
// caller stops it and removes its files with Destroy, on every path; the
// server is killed if the launching process dies first.
func Launch(opts Options) (*Server, error) { return start(opts) }

var shared struct {
	sync.Mutex
	inMain bool
	srv    *Server
	err    error
}

// Main runs the tests of a package that uses the shared server, then
// stops and removes it, and exits with the tests' code. Call it from
// TestMain; a package that also checks for leaked goroutines calls
// goleak.VerifyTestMain(pgtest.Wrap(m)) instead.
func Main(m interface{ Run() int }) { os.Exit(Wrap(m).Run()) }

// Wrap returns m, whose Run also stops and removes the shared server once
// the tests have run.
func Wrap(m interface{ Run() int }) interface{ Run() int } {
	shared.Lock()
	shared.inMain = true
	shared.Unlock()
	return runner(func() int {
		defer func() {
			shared.Lock()
			defer shared.Unlock()
			if shared.srv != nil {
				shared.srv.Destroy()
			}
		}()
		return m.Run()
	})
}

type runner func() int

func (r runner) Run() int { return r() }

// Shared returns the test binary's shared server, starting it on first
// use. The package's TestMain must call Main, which removes it.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.inMain {
		tb.Fatal("pgtest: the package's TestMain must call pgtest.Main(m) or run pgtest.Wrap(m), which stop the shared server")
	}
	if shared.srv == nil && shared.err == nil {
		shared.srv, shared.err = start(Options{})
	}
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.srv
}

// NewDatabase creates an empty database on the shared server and returns
// its URL; the database is dropped when the test ends.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	return Shared(tb).NewDatabase(tb)
}

// NewDatabase creates an empty database on s and returns its URL; it is
// dropped when the test ends (connections still open to it are ended).
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), s.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dbURL, err := s.CreateDatabase(ctx, name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if !s.Running() {
			return // the test stopped it; Destroy removes everything
		}
		if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return dbURL
}

// CreateDatabase creates an empty database called name on s and returns
// its URL. Destroy removes it with the server.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := s.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: creating database %s: %w", name, err)
	}
	return s.URL(name), nil
}

// URL is the postgres:// URL of database name on s, with the password.
func (s *Server) URL(name string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(User, s.password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + name,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Password is the superuser's password, for tests that check it never
// leaks into logs, errors or metrics.
func (s *Server) Password() string { return s.password }

// Port is the server's TCP port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// PID is the postmaster's process ID, the parent of every server process;
// 0 while s is stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *Server) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

func start(opts Options) (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, opts: opts, password: randomHex(16)}
	fail := func(err error) (*Server, error) {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root: run them as the
		// postgres user the Debian package creates.
		cred, err := credentialOf("postgres")
		if err != nil {
			return fail(fmt.Errorf("pgtest: running as root, and %w", err))
		}
		s.cred = cred
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(err)
		}
	}
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(s.password+"\n"), 0o600); err != nil {
		return fail(err)
	}
	if s.cred != nil {
		if err := os.Chown(pwfile, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fail(err)
		}
	}
	initdb := s.command(filepath.Join(bin, "initdb"), "--pgdata", s.dataDir(), "--username", User,
		"--pwfile", pwfile, "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("pgtest: initdb: %w\n%s", err, out))
	}
	_ = os.Remove(pwfile)
	if s.port, err = freePort(); err != nil {
		return fail(err)
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("port = %d", s.port),
		fmt.Sprintf("unix_socket_directories = '%s'", dir),
		"max_connections = 200",
		"shared_buffers = 64MB",
		"log_min_messages = warning",
	}
	if !opts.Durable {
		conf = append(conf, "fsync = off", "synchronous_commit = off", "full_page_writes = off")
	}
	conf = append(conf, opts.Settings...)
	f, err := os.OpenFile(filepath.Join(s.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fail(err)
	}
	_, err = f.WriteString("\n# pgtest\n" + strings.Join(conf, "\n") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	if err := s.Start(); err != nil {
		return fail(err)
	}
	return s, nil
}

// Start starts s again after Stop or Kill, on the same port and data.
func (s *Server) Start() error {
	bin, err := binDir()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("pgtest: the server is running")
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := s.command(filepath.Join(bin, "postgres"), "-D", s.dataDir())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: starting postgres: %w", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.exec(ctx, "SELECT 1")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.stopLocked(syscall.SIGKILL)
			log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			return fmt.Errorf("pgtest: postgres did not accept connections within a minute: %w\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop shuts s down cleanly (fast shutdown: open sessions are ended).
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked(syscall.SIGINT)
}

// Kill kills s with SIGKILL, as a crash would; Start recovers it.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked(syscall.SIGKILL)
	// The postmaster's children notice its death and exit; wait until the
	// port is free so that Start can bind it again.
	for i := 0; i < 200; i++ {
		ln, err := new(net.ListenConfig).Listen(context.Background(), "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)))
		if err == nil {
			_ = ln.Close()
			_ = os.Remove(filepath.Join(s.dataDir(), "postmaster.pid"))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Running reports whether s is started.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

func (s *Server) stopLocked(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// Destroy stops s and removes its files.
func (s *Server) Destroy() {
	s.Stop()
	_ = os.RemoveAll(s.dir)
}

// Log returns the server's log so far, for a failing test to show.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	return string(b)
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// command runs name as the server's user, killed if this process dies.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(context.Background(), name, args...) //nolint:gosec // G204: PostgreSQL's own programs, found by binDir; the server outlives any one call
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: s.cred}
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

// binDir finds the newest installed PostgreSQL's programs.
func binDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(matches) == 0 {
		if p, err := exec.LookPath("postgres"); err == nil {
			return filepath.Dir(p), nil
		}
		return "", errors.New("pgtest: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): " +
			"`make deps` installs Debian's postgresql package")
	}
	sort.Slice(matches, func(i, j int) bool { return version(matches[i]) < version(matches[j]) })
	return filepath.Dir(matches[len(matches)-1]), nil
}

func version(path string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return n
}

func credentialOf(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("no %q user to run PostgreSQL as: %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func freePort() (int, error) {
	ln, err := new(net.ListenConfig).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
