package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a quantity of bytes written in configuration and flags the way
// PostgreSQL writes them: "16MB", "1GB", "512kB" (1024-based) or plain bytes.
type Size uint64

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	{"tib", 1 << 40}, {"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10},
	{"tb", 1 << 40}, {"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10},
	{"t", 1 << 40}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10},
	{"b", 1},
}

// ParseSize reads a size such as "16MB", "1.5GB", "0" or "4096".
func ParseSize(s string) (Size, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return 0, fmt.Errorf("empty size: write a number with a unit such as 16MB")
	}
	mult := uint64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid size %q: write a number with a unit such as 16MB, 1GB or 512kB", s)
	}
	v := f * float64(mult)
	if v > math.MaxUint64/2 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return Size(v), nil
}

// UnmarshalText lets the decoder and flags accept "16MB".
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText writes the size back in its human form.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// String formats bytes the way pg_size_pretty does ("16 MB"), exact below 10 kB.
func (s Size) String() string { return HumanBytes(uint64(s)) }

// Set implements pflag.Value so sizes can be flags (--max-lag 16MB).
func (s *Size) Set(v string) error { return s.UnmarshalText([]byte(v)) }

// Type implements pflag.Value.
func (s *Size) Type() string { return "size" }

// HumanBytes renders a byte count with 1024-based units, one decimal at most.
func HumanBytes(b uint64) string {
	const unit = 1024
	if b < 10*unit {
		return fmt.Sprintf("%d B", b)
	}
	units := []string{"kB", "MB", "GB", "TB", "PB"}
	v := float64(b) / unit
	i := 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	if v >= 100 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f %s", v, units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}
