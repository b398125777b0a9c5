// Package config loads the service's one Config from the environment with
// github.com/sethvargo/go-envconfig, and validates it once. Each concern
// declares its own settings next to its code (server.Config, logging.Config,
// ...); Config composes them.
package config

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/joho/godotenv"
	"github.com/sethvargo/go-envconfig"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/api"
	"github.com/optiinfra/orchestrator/internal/auth"
	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/internal/health"
	"github.com/optiinfra/orchestrator/internal/logging"
	"github.com/optiinfra/orchestrator/internal/postgres"
	"github.com/optiinfra/orchestrator/internal/registry"
	"github.com/optiinfra/orchestrator/internal/server"
)

// Config is every setting of the service.
type Config struct {
	// Environment names the deployment (production, staging, dev, ...);
	// it is reported in the startup line.
	Environment string `env:"ENVIRONMENT, default=production"`

	Server   server.Config
	Log      logging.Config
	Health   health.Config
	API      api.Config
	Registry registry.Config
	Dispatch dispatch.Config
	Auth     auth.Config
	// Coordination is how agents' recommendations are coordinated. Its
	// records are kept in memory even when Database is set (no PostgreSQL
	// store for them yet).
	Coordination coordination.Config
	// Database is where state is kept: PostgreSQL when DATABASE_URL or
	// DATABASE_URL_FILE is set, process memory otherwise.
	Database postgres.Config

	// Warnings are notes about the environment worth a log line once the
	// logger exists, such as a Kubernetes service link that was ignored.
	Warnings []string
}

// ErrInvalid wraps every configuration error, so callers can tell a bad
// setting (exit code 2) from other failures.
var ErrInvalid = errors.New("invalid configuration")

// Environment variables with more than one name.
const (
	portVar      = "PORT"
	portAliasVar = "ORCHESTRATOR_PORT" // the name existing deployments use
)

var environmentName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Load reads the Config from env (variable name -> value) and validates it.
// Every error wraps ErrInvalid and names the variable and its bad value.
func Load(ctx context.Context, env map[string]string) (*Config, error) {
	env, warnings := resolveAliases(env)
	var last lastLookup
	var cfg Config
	err := envconfig.ProcessWith(ctx, &envconfig.Config{
		Target:   &cfg,
		Lookuper: envconfig.MapLookuper(env),
		Mutators: []envconfig.Mutator{&last},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, last.explain(err))
	}
	cfg.Auth.MarkSet(func(name string) bool { _, ok := env[name]; return ok })
	if errs := refuseEmpty(env); len(errs) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, oneLine(errors.Join(errs...)))
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, oneLine(err))
	}
	cfg.Warnings = warnings
	return &cfg, nil
}

// LoadListen reads from env only where the server listens: HTTP_HOST and
// PORT (or ORCHESTRATOR_PORT, resolved as Load resolves it), validated as
// Load validates them. The probe command needs nothing more, and must not
// fail on a setting it does not use, such as an unreadable token file.
func LoadListen(ctx context.Context, env map[string]string) (server.Listen, error) {
	env, _ = resolveAliases(env)
	var last lastLookup
	var listen server.Listen
	err := envconfig.ProcessWith(ctx, &envconfig.Config{
		Target:   &listen,
		Lookuper: envconfig.MapLookuper(env),
		Mutators: []envconfig.Mutator{&last},
	})
	if err != nil {
		return server.Listen{}, fmt.Errorf("%w: %s", ErrInvalid, last.explain(err))
	}
	if err := listen.Validate(); err != nil {
		return server.Listen{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return listen, nil
}

// LoadDatabase reads from env only the database settings (DATABASE_*),
// validated as Load validates them: the migrate command needs nothing
// more, and must not fail on a setting it does not use.
func LoadDatabase(ctx context.Context, env map[string]string) (postgres.Config, error) {
	var last lastLookup
	var db postgres.Config
	err := envconfig.ProcessWith(ctx, &envconfig.Config{
		Target:   &db,
		Lookuper: envconfig.MapLookuper(env),
		Mutators: []envconfig.Mutator{&last},
	})
	if err != nil {
		return postgres.Config{}, fmt.Errorf("%w: %s", ErrInvalid, last.explain(err))
	}
	if errs := refuseEmpty(env); len(errs) > 0 {
		var own []error
		for _, e := range errs {
			if strings.HasPrefix(e.Error(), "DATABASE_") {
				own = append(own, e)
			}
		}
		if len(own) > 0 {
			return postgres.Config{}, fmt.Errorf("%w: %s", ErrInvalid, oneLine(errors.Join(own...)))
		}
	}
	if err := db.Validate(); err != nil {
		return postgres.Config{}, fmt.Errorf("%w: %s", ErrInvalid, oneLine(err))
	}
	return db, nil
}

// Validate checks every concern's settings and reports all problems.
func (c *Config) Validate() error {
	var errs []error
	if !environmentName.MatchString(c.Environment) {
		errs = append(errs, fmt.Errorf("ENVIRONMENT=%q: must be 1 to 63 letters, digits, '.', '_' or '-'", c.Environment))
	}
	for _, v := range []interface{ Validate() error }{c.Server, c.Log, c.Health, c.API, c.Registry, c.Dispatch, c.Auth, c.Coordination, c.Database} {
		if err := v.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// MarshalLogObject writes the effective configuration for the startup line.
// Settings that are secrets must be redacted here.
func (c *Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("environment", c.Environment)
	return errors.Join(
		enc.AddObject("server", c.Server),
		enc.AddObject("log", c.Log),
		enc.AddObject("health", c.Health),
		enc.AddObject("api", c.API),
		enc.AddObject("agents", c.Registry),
		enc.AddObject("tasks", c.Dispatch),
		enc.AddObject("auth", c.Auth),
		enc.AddObject("coordination", c.Coordination),
		enc.AddObject("database", c.Database),
	)
}

// resolveAliases returns a copy of env in which PORT falls back to
// ORCHESTRATOR_PORT. Kubernetes injects ORCHESTRATOR_PORT=tcp://IP:PORT
// into every pod of a namespace that has a Service named "orchestrator"
// (service links); that value is not ours and is ignored with a warning
// rather than failing startup.
func resolveAliases(env map[string]string) (map[string]string, []string) {
	out := maps.Clone(env)
	if out == nil {
		out = map[string]string{}
	}
	if _, ok := out[portVar]; ok {
		return out, nil
	}
	alias, ok := out[portAliasVar]
	if !ok {
		return out, nil
	}
	if strings.Contains(alias, "://") {
		return out, []string{fmt.Sprintf(
			"ignoring %s=%q: it looks like a Kubernetes service link, not a port; set PORT instead",
			portAliasVar, alias)}
	}
	out[portVar] = alias
	return out, nil
}

// lastLookup is an envconfig mutator that remembers the last variable read.
// envconfig reads and decodes one field at a time, so when decoding fails
// this is the variable to blame; envconfig itself only names Go fields.
type lastLookup struct{ key, value string }

func (l *lastLookup) EnvMutate(_ context.Context, _, key, value, current string) (string, bool, error) {
	l.key, l.value = key, value
	return current, false, nil
}

// explain turns a decoding error into "NAME=\"value\": what is wrong".
// Only the errors of the field types Config uses (numbers, booleans,
// durations) are attributed to the last variable read; anything else is a
// programming error in the struct tags and is reported as it is.
func (l *lastLookup) explain(err error) string {
	var reason string
	var numErr *strconv.NumError
	switch {
	case l.key == "":
		return err.Error()
	case errors.As(err, &numErr) && numErr.Func == "ParseBool":
		reason = "must be true or false"
	case errors.As(err, &numErr) && errors.Is(numErr.Err, strconv.ErrRange):
		reason = "number out of range"
	case errors.As(err, &numErr):
		reason = "must be a whole number"
	case strings.Contains(err.Error(), ": time: "): // time.ParseDuration's errors have no type
		reason = "must be a duration such as 500ms, 5s or 1m"
	default:
		return err.Error()
	}
	name := l.key
	if name == portVar {
		name = portVar + " (or " + portAliasVar + ")"
	}
	return fmt.Sprintf("%s=%q: %s", name, l.value, reason)
}

// oneLine joins the lines of a joined error with "; ".
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// Environ turns os.Environ-style "KEY=value" pairs into a map.
func Environ(pairs []string) map[string]string {
	env := make(map[string]string, len(pairs))
	for _, kv := range pairs {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// WithDotEnv returns env with the variables of the .env file at path added
// where env does not set them: real environment variables always win. A
// missing file is not an error; a malformed one is.
func WithDotEnv(env map[string]string, path string) (map[string]string, error) {
	file, err := godotenv.Read(path)
	if errors.Is(err, os.ErrNotExist) {
		return env, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %w", ErrInvalid, path, err)
	}
	maps.Copy(file, env)
	return file, nil
}
