package topology

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL write-ahead log position (pg_lsn): a byte offset into
// the WAL stream. Subtracting two LSNs gives a distance in bytes.
type LSN uint64

// ParseLSN reads an LSN written the way PostgreSQL writes it, "16/B374D848".
// Bad input is an error, never a zero LSN: a zero would read as "infinitely
// far behind" or, worse, as a valid position to compare against.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("invalid LSN %q: want two hexadecimal numbers such as 16/B374D848", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q: want two hexadecimal numbers such as 16/B374D848", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q: want two hexadecimal numbers such as 16/B374D848", s)
	}
	return LSN(h<<32 | l), nil
}

// String formats the LSN as PostgreSQL does, %X/%X.
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF)
}

// MarshalText writes the LSN as "16/B374D848" (a JSON string).
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads the form written by MarshalText and by PostgreSQL's
// to_json(pg_lsn).
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// Sub returns l - o in bytes, negative when o is ahead.
func (l LSN) Sub(o LSN) int64 { return int64(l - o) }

// LagBytes is how many bytes replica is behind primary, clamped at zero:
// the two positions are sampled at slightly different moments on different
// servers, so a replica can appear a few bytes "ahead" of the primary it
// follows. The arguments name which position is ahead; there is no method
// form, which invites reading the comparison backwards.
func LagBytes(primary, replica LSN) uint64 {
	if replica >= primary {
		return 0
	}
	return uint64(primary - replica)
}

// Distance is how far apart two positions are, whichever is ahead.
func Distance(a, b LSN) uint64 {
	return max(LagBytes(a, b), LagBytes(b, a))
}

// Lag is LagBytes over nullable positions: unknown (nil) when either is.
func Lag(primary, replica *LSN) *uint64 {
	if primary == nil || replica == nil {
		return nil
	}
	v := LagBytes(*primary, *replica)
	return &v
}

// timelineFromWALFile reads the timeline from a WAL segment file name, whose
// first eight hex digits are the timeline ID (pg_walfile_name's output).
func timelineFromWALFile(name string) (uint32, error) {
	if len(name) < 24 {
		return 0, fmt.Errorf("invalid WAL file name %q", name)
	}
	v, err := strconv.ParseUint(name[:8], 16, 32)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("invalid WAL file name %q", name)
	}
	return uint32(v), nil
}
