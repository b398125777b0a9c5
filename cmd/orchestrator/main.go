// Command orchestrator is the OptiInfra Orchestrator: the control-plane
// service that OptiInfra's agents register with and that routes tasks to
// them.
//
//	orchestrator [serve]          run the service (the default)
//	orchestrator probe [--url U]  exit 0 only if U answers 2xx (for images without a shell)
//	orchestrator migrate up       apply the pending database schema migrations
//	orchestrator migrate status   list the migrations and whether each is applied
//	orchestrator version          print the build
//
// Exit codes: 0 after a clean drain; 1 on a runtime failure; 2 on invalid
// configuration or usage; 3 when the shutdown timeout cut requests or
// tasks off; 128+N when a second signal N forces an immediate exit.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/optiinfra/orchestrator/internal/config"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/server"
)

// Exit codes.
const (
	exitOK           = 0
	exitFailure      = 1
	exitUsage        = 2
	exitDrainTimeout = 3
)

// errUsage marks command-line mistakes (exit code 2).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := shutdownOnSignal(os.Stderr)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "orchestrator: %v\n", err)
	}
	os.Exit(exitCode(err))
}

// shutdownOnSignal returns a context that ends on the first SIGTERM or
// SIGINT, which starts the drain. A second signal exits at once.
func shutdownOnSignal(stderr io.Writer) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		if _, ok := <-signals; !ok {
			return
		}
		cancel()
		sig, ok := <-signals
		if !ok {
			return
		}
		fmt.Fprintf(stderr, "orchestrator: second signal (%s) during shutdown: exiting now\n", sig)
		os.Exit(128 + int(sig.(syscall.Signal)))
	}()
	return ctx, func() {
		signal.Stop(signals)
		close(signals)
		cancel()
	}
}

func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUsage), errors.Is(err, config.ErrInvalid):
		return exitUsage
	case errors.Is(err, server.ErrDrainTimeout), errors.Is(err, dispatch.ErrDrainTimeout):
		return exitDrainTimeout
	default:
		return exitFailure
	}
}

// run is the whole program behind main, with everything it touches passed
// in, so tests can run it in-process (on PORT=0) and cancel ctx to stop it.
func run(ctx context.Context, args, env []string, stdout, stderr io.Writer) error {
	vars := config.Environ(env)
	command, rest := "serve", args
	if len(args) > 0 {
		command, rest = args[0], args[1:]
	}
	switch command {
	case "serve":
		if len(rest) > 0 {
			return fmt.Errorf("%w: serve takes no arguments; configure it with environment variables", errUsage)
		}
		return serve(ctx, vars, stdout)
	case "probe":
		return probe(ctx, rest, vars, stdout, stderr)
	case "migrate":
		return migrate(ctx, rest, vars, stdout)
	case "version", "--version", "-version":
		return printVersion(stdout)
	case "help", "-h", "-help", "--help":
		_, err := io.WriteString(stdout, usage)
		return err
	default:
		return fmt.Errorf("%w: unknown command %q (try: serve, probe, migrate, version, help)", errUsage, command)
	}
}

const usage = `Usage:
  orchestrator [serve]                      run the service; settings come from the
                                            environment and from ./.env (see README)
  orchestrator probe [--url URL]... [--timeout D]
                                            GET each URL (default: this server's /ready at
                                            HTTP_HOST and PORT, from the environment and
                                            ./.env) and exit 0 only if every answer is 2xx
  orchestrator migrate up|status            apply the pending schema migrations of the
                                            database at DATABASE_URL or DATABASE_URL_FILE
                                            (environment and ./.env), or list them; for
                                            DATABASE_AUTO_MIGRATE=false
  orchestrator version                      print version, commit, build date, Go version
`
