package benchmarks

import (
	"context"
	"fmt"
	"sort"
	"syscall"
	"time"
)

// Percentiles summarises durations.
type Percentiles struct {
	N             int
	P50, P99, Max time.Duration
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.5) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Percentiles{N: len(s), P50: at(0.50), P99: at(0.99), Max: s[len(s)-1]}
}

// PercentilesOf summarises d (for harnesses outside this package, such as
// the etcd comparison in benchmarks/etcdwatch).
func PercentilesOf(d []time.Duration) Percentiles { return percentiles(d) }

// ProcessCPU is the CPU time (user + system) this process has used so far.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// MeasureIdleCPU is this process's CPU seconds per second over d (0 when d
// is not positive).
func MeasureIdleCPU(ctx context.Context, d time.Duration) (float64, error) {
	if d <= 0 {
		return 0, nil
	}
	cpu0, t0 := ProcessCPU(), time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	return (ProcessCPU() - cpu0).Seconds() / time.Since(t0).Seconds(), nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
