// Package synth generates deterministic synthetic events for demos, tests
// and benchmarks. It knows nothing of the pipeline; the same seed always
// gives the same events, so a test can rebuild them for its oracle.
package synth

import (
	"math/rand/v2"
	"strconv"
	"time"
)

// Events configures a stream of synthetic events.
type Events struct {
	Seed     int64
	Count    int
	Entities int64     // entity ids are drawn from 1..Entities
	Start    time.Time // first possible occurred_at; default 2026-10-28T00:00Z
	Span     time.Duration
	// Types are the event types; default sale, refund, subscription.
	Types []string
	// Duplicates is the fraction of events that repeat an earlier event_id
	// (with the same content, as a producer retry would); default 0.
	Duplicates float64
}

// Event is one generated event; Amount is in 10^-4 units.
type Event struct {
	ID         string
	EntityID   int64
	OccurredAt time.Time
	Type       string
	Amount     int64
	Quantity   int64
}

// JSON renders the event in the SPEC's wire format; amounts are strings or
// numbers alternately, as real producers mix them.
func (e Event) JSON() []byte {
	b := make([]byte, 0, 160)
	b = append(b, `{"event_id":"`...)
	b = append(b, e.ID...)
	b = append(b, `","entity_id":`...)
	b = strconv.AppendInt(b, e.EntityID, 10)
	b = append(b, `,"occurred_at":"`...)
	b = e.OccurredAt.AppendFormat(b, time.RFC3339)
	b = append(b, `","type":"`...)
	b = append(b, e.Type...)
	b = append(b, `","amount":`...)
	amt := formatUnits(e.Amount)
	if e.Quantity%2 == 0 {
		b = append(b, '"')
		b = append(b, amt...)
		b = append(b, '"')
	} else {
		b = append(b, amt...)
	}
	b = append(b, `,"quantity":`...)
	b = strconv.AppendInt(b, e.Quantity, 10)
	return append(b, '}')
}

func formatUnits(u int64) string {
	neg := u < 0
	if neg {
		u = -u
	}
	s := strconv.FormatInt(u/10000, 10) + "." + strconv.FormatInt(10000+u%10000, 10)[1:]
	if neg {
		s = "-" + s
	}
	return s
}

// Each calls fn for every event in order; it stops at the first error.
func (c Events) Each(fn func(i int, e Event) error) error {
	if c.Start.IsZero() {
		c.Start = time.Date(2026, 10, 28, 0, 0, 0, 0, time.UTC)
	}
	if c.Span <= 0 {
		c.Span = 30 * 24 * time.Hour
	}
	if len(c.Types) == 0 {
		c.Types = []string{"sale", "refund", "subscription"}
	}
	rng := rand.New(rand.NewPCG(uint64(c.Seed), 0x6576656e7473)) //nolint:gosec // not for security
	var recent []Event
	for i := 0; i < c.Count; i++ {
		var e Event
		if len(recent) > 0 && rng.Float64() < c.Duplicates {
			e = recent[rng.IntN(len(recent))]
		} else {
			e = Event{
				ID:         "ev-" + strconv.FormatInt(c.Seed, 36) + "-" + strconv.Itoa(i),
				EntityID:   1 + rng.Int64N(c.Entities),
				OccurredAt: c.Start.Add(time.Duration(rng.Int64N(int64(c.Span/time.Second))) * time.Second),
				Type:       c.Types[rng.IntN(len(c.Types))],
				Quantity:   1 + rng.Int64N(9),
			}
			e.Amount = (1 + rng.Int64N(50000)) * 100 // 0.01 … 500.00
			if e.Type == "refund" {
				e.Amount = -e.Amount
			}
			if len(recent) < 1024 {
				recent = append(recent, e)
			} else {
				recent[rng.IntN(len(recent))] = e
			}
		}
		if err := fn(i, e); err != nil {
			return err
		}
	}
	return nil
}

// CSVHeader is the header of CSVRow's columns.
var CSVHeader = []string{"event_id", "entity_id", "occurred_at", "type", "amount", "quantity"}

// CSVRow renders the event as a CSV row in CSVHeader's order.
func (e Event) CSVRow() []string {
	return []string{e.ID, strconv.FormatInt(e.EntityID, 10), e.OccurredAt.Format(time.RFC3339), e.Type,
		formatUnits(e.Amount), strconv.FormatInt(e.Quantity, 10)}
}
