package main

import (
	"errors"
	"math"
	"os"
	"strconv"
	"strings"
)

// ByteSize is a size setting: a number of bytes with an optional unit
// (B, KiB/Ki/K, MiB/Mi/M, GiB/Gi/G; K, M and G count in 1024s, as
// Kubernetes' binary quantities do; kB, MB and GB in 1000s).
type ByteSize int64

// EnvDecode implements envconfig.Decoder.
func (b *ByteSize) EnvDecode(s string) error {
	n, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = ByteSize(n)
	return nil
}

func (b ByteSize) String() string { return strconv.FormatInt(int64(b), 10) }

func parseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := len(s)
	for i > 0 && (s[i-1] < '0' || s[i-1] > '9') {
		i--
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || n < 0 {
		return 0, errors.New("want a size such as 256MiB")
	}
	mult := map[string]float64{
		"": 1, "B": 1,
		"K": 1 << 10, "Ki": 1 << 10, "KiB": 1 << 10, "kB": 1e3, "KB": 1e3,
		"M": 1 << 20, "Mi": 1 << 20, "MiB": 1 << 20, "MB": 1e6,
		"G": 1 << 30, "Gi": 1 << 30, "GiB": 1 << 30, "GB": 1e9,
	}[unit]
	if mult == 0 {
		return 0, errors.New("unknown unit (want B, KiB, MiB or GiB)")
	}
	v := n * mult
	if v >= math.MaxInt64 {
		return 0, errors.New("too large")
	}
	return int64(v), nil
}

// cgroupMemoryLimit reads the memory limit of the process's cgroup (v2,
// then v1); ok is false when there is none or it cannot be read.
func cgroupMemoryLimit() (int64, bool) {
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(raw))
		if v == "max" {
			return 0, false
		}
		n, err := strconv.ParseInt(v, 10, 64)
		// cgroup v1 writes a huge number for "no limit".
		if err != nil || n <= 0 || n >= 1<<62 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// Memory plan: of the process's memory limit, this share may be held by
// request and answer bodies in flight; the Go runtime is asked to keep the
// heap under gcShare of it (a soft limit: it collects harder when close).
const (
	bodyShare = 0.4
	gcShare   = 0.9
	// perCall is what one call in flight costs besides its bodies
	// (goroutine, buffers, parsed headers): it sets the default of
	// TOKENPROXY_MAX_INFLIGHT.
	perCall = 256 << 10
)

// memoryPlan is the limits the process runs within.
type memoryPlan struct {
	limit       int64 // bytes the process may plan for
	bodyBudget  int64
	maxInflight int
	fromCgroup  bool
}

func planMemory(configured int64, maxInflight int, cgroup func() (int64, bool)) memoryPlan {
	p := memoryPlan{limit: configured}
	if cg, ok := cgroup(); ok && cg < p.limit {
		p.limit, p.fromCgroup = cg, true
	}
	p.bodyBudget = int64(float64(p.limit) * bodyShare)
	p.maxInflight = maxInflight
	if p.maxInflight <= 0 {
		p.maxInflight = max(16, int(p.limit/perCall))
	}
	return p
}
