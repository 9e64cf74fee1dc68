package pgctl

import (
	"testing"

	"github.com/replctl/replctl/topology"
)

// The SQL fence's final position is the end of the last record: an insert
// position just past a page header (the last record ended on a page
// boundary) is never flushed, nor replayed by any standby.
func TestRecordEnd(t *testing.T) {
	t.Parallel()
	const bs, seg = 8192, 16 << 20
	for _, c := range []struct{ in, want topology.LSN }{
		{0x5039FA8, 0x5039FA8},
		{0x503A018, 0x503A000},       // short header after a page boundary
		{0x6000028, 0x6000000},       // long header at a segment start
		{0x503A000 + 100, 0x503A064}, // in a page
	} {
		if got := recordEnd(c.in, bs, seg); got != c.want {
			t.Errorf("recordEnd(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}
