// Package api is the HTTP layer: the gorilla/mux router, the middleware
// every request goes through, the handlers, and the JSON error model
// (every error body is {"error": "..."}).
package api

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/auth"
	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config/bound"
	"github.com/optiinfra/orchestrator/internal/health"
	"github.com/optiinfra/orchestrator/internal/inflight"
	"github.com/optiinfra/orchestrator/internal/registry"
)

// Config is what the HTTP layer reads from the environment.
type Config struct {
	// MaxBodyBytes bounds the size of a request body.
	MaxBodyBytes int64 `env:"HTTP_MAX_BODY_BYTES, default=1048576"`
	// FaultsEnabled mounts the /faults/* endpoints that tests use to make
	// the server slow, panic or fail its readiness. Never enable it in
	// production.
	FaultsEnabled bool `env:"FAULTS_ENABLED, default=false"`
	// TrustedProxies are the CIDRs of the proxies in front of the service
	// whose X-Forwarded-For header is believed when an /api/v1 agent
	// registers from an unspecified or loopback address (see clientAddr).
	// Empty, the default, believes no header: the request's address is
	// the direct peer's.
	TrustedProxies []string `env:"HTTP_TRUSTED_PROXIES"`
}

// maxBodyBytes is the largest HTTP_MAX_BODY_BYTES: a body is decoded in
// memory, and a gibibyte of JSON is no request this API takes.
const maxBodyBytes = 1 << 30

// Validate reports the first setting that cannot be used, naming its variable.
func (c Config) Validate() error {
	var errs []error
	if err := bound.Int("HTTP_MAX_BODY_BYTES", c.MaxBodyBytes, 1, maxBodyBytes); err != nil {
		errs = append(errs, err)
	}
	if _, err := registry.ParseNetworks(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("HTTP_TRUSTED_PROXIES=%q: %w", strings.Join(c.TrustedProxies, ","), err))
	}
	return errors.Join(errs...)
}

// MarshalLogObject lets the startup line show the effective settings.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddInt64("max_body_bytes", c.MaxBodyBytes)
	enc.AddBool("faults_enabled", c.FaultsEnabled)
	enc.AddString("trusted_proxies", strings.Join(c.TrustedProxies, ","))
	return nil
}

// Options are the HTTP layer's collaborators.
type Options struct {
	Config Config
	Logger *zap.Logger
	// Metrics is the Prometheus registry the request metrics are
	// registered with and /metrics serves.
	Metrics *prometheus.Registry
	Health  *health.Health
	Build   buildinfo.Info
	// InFlight records every request while it is served.
	InFlight *inflight.Tracker
	// Agents and Tasks serve /agents and /tasks; their routes are mounted
	// only when they are set.
	Agents Agents
	Tasks  Tasks
	// Coordination serves /coordination and /api/v1/recommendations,
	// mounted only when set.
	Coordination Coordination
	// Auth checks the bearer tokens of /agents and /tasks; nil leaves them open.
	Auth *auth.Authenticator
}

// New returns the service's HTTP handler: the router behind the middleware.
func New(opts Options) (http.Handler, error) {
	trusted, err := registry.ParseNetworks(opts.Config.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("HTTP_TRUSTED_PROXIES: %w", err)
	}
	metrics, err := newHTTPMetrics(opts.Metrics, opts.InFlight)
	if err != nil {
		return nil, err
	}
	rt := &router{mux: mux.NewRouter(), static: map[string]*[len(methodLabels)]http.Handler{}}

	// Probes and /metrics first: they are the bulk of the traffic, and mux
	// tries routes in order.
	live := rt.handle("/live", quiet, opts.Health.LiveHandler(), http.MethodGet, http.MethodHead)
	ready := rt.handle("/ready", quiet, opts.Health.ReadyHandler(), http.MethodGet, http.MethodHead)
	rt.handle("/health", quiet, opts.Health.HealthHandler(), http.MethodGet, http.MethodHead)
	rt.handle("/metrics", quiet, promhttp.HandlerFor(opts.Metrics, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      opts.Metrics,
	}), http.MethodGet, http.MethodHead)
	rt.handle("/", loud, rootHandler(opts.Build.Version, opts.Health), http.MethodGet, http.MethodHead)
	rt.handle("/version", loud, versionHandler(opts.Build), http.MethodGet, http.MethodHead)
	rt.handle("/openapi.yaml", loud, openAPIHandler(), http.MethodGet, http.MethodHead)
	if opts.Agents != nil {
		mountAgents(rt, opts.Agents, opts.Auth)
		mountAgentsV1(rt, opts.Agents, opts.Auth, trusted)
	}
	if opts.Tasks != nil {
		mountTasks(rt, opts.Tasks, opts.Auth)
	}
	if opts.Coordination != nil {
		mountCoordination(rt, opts.Coordination, opts.Auth)
	}
	if opts.Config.FaultsEnabled {
		mountFaults(rt, opts.Health)
	}

	rt.mux.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not found: no route for "+r.URL.Path)
	})
	rt.mux.MethodNotAllowedHandler = http.HandlerFunc(rt.methodNotAllowed)

	return &middleware{
		next:         rt,
		log:          opts.Logger,
		metrics:      metrics,
		drain:        opts.Health,
		inFlight:     opts.InFlight,
		maxBodyBytes: opts.Config.MaxBodyBytes,
		probes:       &plainProbes{health: opts.Health, live: live, ready: ready},
	}, nil
}

// Whether a route's access log lines are written at debug (quiet) or info.
const (
	quiet = true
	loud  = false
)

// router registers every route on mux and remembers, per path, the methods
// that path allows, for the Allow header of a 405.
//
// Routes without variables are also kept in an exact-match table that is
// tried first. A mux match copies the request twice (to put the route and
// its variables in the context), which is most of what a probe allocates;
// a static route needs neither. Anything not in the table (templates, a
// wrong method, a path mux would clean and redirect) goes to mux, so the
// behaviour is mux's either way.
type router struct {
	mux    *mux.Router
	allows []allowed
	static map[string]*[len(methodLabels)]http.Handler // path -> handler by methodIndex
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if byMethod := rt.static[r.URL.Path]; byMethod != nil {
		if h := byMethod[methodIndex(r.Method)]; h != nil {
			h.ServeHTTP(w, r)
			return
		}
	}
	rt.mux.ServeHTTP(w, r)
}

// route is a matched route as the middleware sees it: the template labels
// metrics and logs (never the raw path, whose values are unbounded), a
// quiet route's access log lines are written at debug, and series caches
// the route's metric series.
type route struct {
	template string
	quiet    bool
	series   seriesCache
}

// allowed is a path pattern and the methods it accepts.
type allowed struct {
	path    *regexp.Regexp
	methods []string
}

// handle mounts h on the path template for the given methods and returns
// the route. The wrapper tells the middleware which route matched.
func (rt *router) handle(template string, quietLog bool, h http.Handler, methods ...string) *route {
	matched := &route{template: template, quiet: quietLog}
	labelled := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rec := routeOf(w); rec != nil {
			rec.route = matched
		}
		h.ServeHTTP(w, r)
	})
	r := rt.mux.Handle(template, labelled).Methods(methods...)
	if !strings.Contains(template, "{") {
		byMethod := rt.static[template]
		if byMethod == nil {
			byMethod = new([len(methodLabels)]http.Handler)
			rt.static[template] = byMethod
		}
		for _, m := range methods {
			if i := methodIndex(m); methodLabels[i] == m { // not OTHER: that slot stands for every other method
				byMethod[i] = labelled
			}
		}
	}
	pattern, err := r.GetPathRegexp()
	if err != nil {
		panic(fmt.Sprintf("api: route %s: %v", template, err)) // a typo in a template above
	}
	rt.allows = append(rt.allows, allowed{path: regexp.MustCompile(pattern), methods: methods})
	return matched
}

// methodNotAllowed answers 405 with the Allow header listing what the path
// does accept.
func (rt *router) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	var methods []string
	for _, a := range rt.allows {
		if a.path.MatchString(r.URL.Path) {
			methods = append(methods, a.methods...)
		}
	}
	slices.Sort(methods)
	methods = slices.Compact(methods)
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed,
		fmt.Sprintf("method %s not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(methods, ", ")))
}
