package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/optiinfra/orchestrator/internal/buildinfo"
	"github.com/optiinfra/orchestrator/internal/config"
)

// urlList is a repeatable --url flag.
type urlList []string

func (u *urlList) String() string     { return strings.Join(*u, ",") }
func (u *urlList) Set(v string) error { *u = append(*u, v); return nil }

// probe GETs each URL and succeeds only if every answer is 2xx. It lets an
// image without a shell check itself: Docker's HEALTHCHECK and the Helm test
// pod run it.
func probe(ctx context.Context, args []string, env map[string]string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var urls urlList
	fs.Var(&urls, "url", "URL to GET; repeat for several (default: this server's /ready, at HTTP_HOST and PORT)")
	timeout := fs.Duration("timeout", 2*time.Second, "time limit for each request")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: probe: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: probe: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if len(urls) == 0 {
		ready, err := readyURL(ctx, env)
		if err != nil {
			return err
		}
		urls = urlList{ready}
	}
	// No proxy: a probe checks this service, never what a proxy says of it.
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{Proxy: nil}}
	for _, u := range urls {
		if err := probeOne(ctx, client, u); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "ok: %s\n", u)
	}
	return nil
}

// readyURL is the /ready of the server this environment configures, with
// ./.env applied as serve applies it. Only HTTP_HOST and PORT are read: a
// HEALTHCHECK must not call a healthy server unhealthy over a setting the
// probe does not use (a token file it cannot read, say).
func readyURL(ctx context.Context, env map[string]string) (string, error) {
	env, err := config.WithDotEnv(env, dotEnvFile)
	if err != nil {
		return "", err
	}
	listen, err := config.LoadListen(ctx, env)
	if err != nil {
		return "", err
	}
	if listen.Port == 0 {
		return "", fmt.Errorf("%w: probe: PORT=0 makes the server pick a free port the probe cannot know; pass --url", errUsage)
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(dialHost(listen.Host), strconv.Itoa(listen.Port)), Path: "/ready"}
	return u.String(), nil
}

// dialHost is the address that reaches a server bound to host: host
// itself, or the loopback of its family when host means every interface.
func dialHost(host string) string {
	if host == "" {
		return "127.0.0.1"
	}
	if addr, err := netip.ParseAddr(host); err == nil && addr.IsUnspecified() {
		if addr.Is4() {
			return "127.0.0.1"
		}
		return "::1"
	}
	return host
}

func probeOne(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("%w: probe: %w", errUsage, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("probe: GET %s: %s", url, resp.Status)
	}
	return nil
}

// printVersion prints the build of this binary.
func printVersion(stdout io.Writer) error {
	b := buildinfo.Read()
	_, err := fmt.Fprintf(stdout, "orchestrator %s (commit %s, built %s, %s)\n", b.Version, b.Commit, b.BuildDate, b.GoVersion)
	return err
}
