// Package buildinfo holds what the binary knows about its own build.
//
// The Makefile and the Dockerfile stamp version, commit and build date with
//
//	-ldflags "-X github.com/optiinfra/orchestrator/internal/buildinfo.version=..."
//
// A plain `go run` or `go build` leaves them unset; Read then falls back to
// the VCS stamp the Go toolchain records, and to "dev"/"unknown".
package buildinfo

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Set with -ldflags -X; empty when built without the Makefile.
var (
	version string
	commit  string
	date    string
)

// Info describes the running binary.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	BuildDate string `json:"build_date"`
	GoVersion string `json:"go_version"`
}

// Read returns the build information of the running binary.
func Read() Info {
	info := Info{Version: version, Commit: commit, BuildDate: date, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && info.Commit == "":
				info.Commit = s.Value
			case s.Key == "vcs.time" && info.BuildDate == "":
				info.BuildDate = s.Value
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	if info.BuildDate == "" {
		info.BuildDate = "unknown"
	}
	return info
}

// Collector exports the build as the constant gauge
// orchestrator_build_info{version,commit,build_date,go_version} 1.
func (i Info) Collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "orchestrator_build_info",
		Help: "Always 1; the labels describe the running binary.",
		ConstLabels: prometheus.Labels{
			"version": i.Version, "commit": i.Commit, "build_date": i.BuildDate, "go_version": i.GoVersion,
		},
	})
	g.Set(1)
	return g
}
