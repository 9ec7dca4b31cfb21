package idstate

import (
	"fmt"
	"log/slog"
	"time"
)

// Limits on an event id.
const (
	MinIDLen = 1
	MaxIDLen = 128
)

// Options configures a Store. Zero fields take the default written beside
// them.
type Options struct {
	// Horizon is how long after its accepted occurrence an id is still a
	// duplicate. Required, at least a millisecond.
	Horizon time.Duration
	// Segment is the width of the time segments that expiry drops whole. It
	// must divide a day evenly and be at least a second. Default: the
	// widest of 24h, 12h, 6h, 4h, 3h, 2h, 1h, 30m, 15m, 10m, 5m, 1m, 1s not
	// wider than Horizon, so a lookup reads at most about
	// Horizon/Segment+1 segments (2 when Horizon is one of those widths).
	// It is part of the on-disk layout: Open fails with ErrLayout when the
	// directory was written with another width (start a new directory).
	Segment time.Duration
	// Keep is how long past the horizon segments are kept so that replays
	// of older records still see them. Default 24h; negative means 0.
	Keep time.Duration
	// CacheBytes is the Pebble block cache size. Default 64 MiB. Pebble
	// charges its memtables to the same cache, so the cache is made
	// 2 × MemTableBytes larger than this.
	CacheBytes int64
	// MemTableBytes is the Pebble memtable size. Default 64 MiB; a Claim
	// batch larger than half of it becomes a table of its own. Ids are
	// random, so every flush overlaps the whole of its segments in the
	// levels below: larger memtables mean fewer, larger flushes and less
	// rewriting (claiming 10M fresh ids took 24% less CPU at 64 MiB than at
	// 16 MiB, BenchmarkClaim/fresh-100k at -benchtime 100x).
	MemTableBytes int64
	// Logger receives Pebble's messages: informational ones at Debug.
	// Default: discarded.
	Logger *slog.Logger
	// Temporary makes the store scratch space: Open empties the directory
	// once it holds its lock, and Close empties it again before letting the
	// lock go. A directory left behind by a process that was killed is so
	// reclaimed by the next Open of it, never read. Default false: the
	// state is kept across Close and Open.
	Temporary bool
}

// segmentWidths are the default candidates for Options.Segment, widest first.
var segmentWidths = []time.Duration{
	24 * time.Hour, 12 * time.Hour, 6 * time.Hour, 4 * time.Hour, 3 * time.Hour,
	2 * time.Hour, time.Hour, 30 * time.Minute, 15 * time.Minute,
	10 * time.Minute, 5 * time.Minute, time.Minute, time.Second,
}

// withDefaults returns o with defaults applied, or an error naming the first
// invalid field.
func (o Options) withDefaults() (Options, error) {
	if o.Horizon < time.Millisecond {
		return o, fmt.Errorf("idstate: Horizon %v: must be at least 1ms", o.Horizon)
	}
	if o.Segment == 0 {
		o.Segment = time.Second
		for _, w := range segmentWidths {
			if w <= o.Horizon {
				o.Segment = w
				break
			}
		}
	}
	if o.Segment < time.Second || (24*time.Hour)%o.Segment != 0 || o.Segment%time.Millisecond != 0 {
		return o, fmt.Errorf("idstate: Segment %v: must be at least 1s and divide a day evenly", o.Segment)
	}
	if o.Keep == 0 {
		o.Keep = 24 * time.Hour
	} else if o.Keep < 0 {
		o.Keep = 0
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 64 << 20
	}
	if o.MemTableBytes <= 0 {
		o.MemTableBytes = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}
