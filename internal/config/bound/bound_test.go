package bound

import (
	"math"
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	if err := Duration("X", time.Second, time.Second, time.Hour); err != nil {
		t.Errorf("the lower limit itself: %v", err)
	}
	if err := Duration("X", time.Hour, time.Second, time.Hour); err != nil {
		t.Errorf("the upper limit itself: %v", err)
	}
	for d, want := range map[time.Duration]string{
		time.Second - 1:       `X="999.999999ms": must be from 1s to 1h`,
		math.MaxInt64:         `X="2562047h47m16.854775807s": must be from 1s to 1h`,
		-time.Nanosecond:      `X="-1ns": must be from 1s to 1h`,
		time.Hour + time.Hour: `X="2h0m0s": must be from 1s to 1h`,
	} {
		if err := Duration("X", d, time.Second, time.Hour); err == nil || err.Error() != want {
			t.Errorf("Duration(%s) = %v, want %s", d, err, want)
		}
	}
}

func TestInt(t *testing.T) {
	if err := Int("N", 0, 0, 10); err != nil {
		t.Errorf("the lower limit itself: %v", err)
	}
	if err := Int("N", 11, 0, 10); err == nil || err.Error() != `N="11": must be from 0 to 10` {
		t.Errorf("Int(11) = %v", err)
	}
	if err := Int("N", math.MinInt64, 0, 10); err == nil {
		t.Error("Int(MinInt64) accepted")
	}
}

func TestShort(t *testing.T) {
	for d, want := range map[time.Duration]string{
		24 * time.Hour: "24h", 8760 * time.Hour: "8760h", time.Hour + 30*time.Minute: "1h30m",
		time.Minute: "1m", 100 * time.Millisecond: "100ms", 0: "0s", 90 * time.Second: "1m30s",
		time.Hour + time.Second: "1h0m1s",
	} {
		if got := Short(d); got != want {
			t.Errorf("Short(%v) = %q, want %q", d, got, want)
		}
	}
}
