// Package bound reports settings outside the range their use can take, in
// the one form every Config.Validate shares: the variable, its value, and
// the range. It sits below config so that each concern's package can use
// it without importing config (which imports them).
package bound

import (
	"fmt"
	"strings"
	"time"
)

// Duration returns an error naming variable when d is outside [lo, hi],
// nil otherwise.
func Duration(variable string, d, lo, hi time.Duration) error {
	if d >= lo && d <= hi {
		return nil
	}
	return fmt.Errorf("%s=%q: must be from %s to %s", variable, d, Short(lo), Short(hi))
}

// Int returns an error naming variable when n is outside [lo, hi], nil
// otherwise.
func Int(variable string, n, lo, hi int64) error {
	if n >= lo && n <= hi {
		return nil
	}
	return fmt.Errorf("%s=\"%d\": must be from %d to %d", variable, n, lo, hi)
}

// Short writes d as a person would: 24h rather than 24h0m0s, 1m30s rather
// than 1m30s0ms.
func Short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
