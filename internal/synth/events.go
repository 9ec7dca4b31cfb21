// Package synth generates deterministic synthetic events for demos, tests
// and benchmarks. It knows nothing of the pipeline; the same seed always
// gives the same events, so a test can rebuild them for its oracle.
package synth

import (
	"fmt"
	randv1 "math/rand"
	"math/rand/v2"
	"strconv"
	"time"
)

// Distribution is how events spread over entities.
type Distribution int

const (
	// Uniform draws every event's entity uniformly from 1..Entities.
	Uniform Distribution = iota
	// Zipf draws the entity of rank k (1-based) with probability
	// proportional to k^-s (s = Events.ZipfS): a few entities get most of
	// the events, as a few large accounts do in a real business. Ranks are
	// mapped to entity ids through a seeded permutation, not rank k → id k:
	// hierarchy.Synthesize gives roots and the top levels the lowest ids, so
	// rank k → id k would make the hot entities the roots and their
	// children, whose chains are the shortest. Under the permutation the hot
	// entities fall on every depth in proportion to its population (so most
	// are leaves, as most entities are), and their chains average out.
	Zipf
)

// DefaultZipfS is the Zipf exponent when Events.ZipfS is 0.
const DefaultZipfS = 1.1

// String is the distribution's name as ParseDistribution reads it.
func (d Distribution) String() string {
	switch d {
	case Uniform:
		return "uniform"
	case Zipf:
		return "zipf"
	}
	return fmt.Sprintf("Distribution(%d)", int(d))
}

// ParseDistribution reads "uniform" or "zipf".
func ParseDistribution(s string) (Distribution, error) {
	for _, d := range []Distribution{Uniform, Zipf} {
		if s == d.String() {
			return d, nil
		}
	}
	return 0, fmt.Errorf("synth: unknown distribution %q (want uniform or zipf)", s)
}

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
	// Distribution spreads events over entities; default Uniform, whose
	// events are the same as before the field existed.
	Distribution Distribution
	// ZipfS is the exponent s of Zipf, > 1; default DefaultZipfS (1.1).
	ZipfS float64
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

// Each calls fn for every event in order; it stops at the first error. It
// returns an error without calling fn if the configuration is invalid.
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
	entity, err := c.entities()
	if err != nil {
		return err
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
				EntityID:   entity(rng),
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

// entities returns the entity draw of c's distribution. Uniform draws from
// rng, as it always has, so its events do not change; Zipf draws from its
// own stream, seeded from Seed, and leaves rng to the other fields.
func (c Events) entities() (func(rng *rand.Rand) int64, error) {
	if c.Distribution == Uniform {
		return func(rng *rand.Rand) int64 { return 1 + rng.Int64N(c.Entities) }, nil
	}
	if c.Distribution != Zipf {
		return nil, fmt.Errorf("synth: unknown distribution %d", int(c.Distribution))
	}
	s := c.ZipfS
	if s == 0 {
		s = DefaultZipfS
	}
	if !(s > 1) || c.Entities < 1 {
		return nil, fmt.Errorf("synth: Zipf needs an exponent > 1 and at least one entity, not s = %v over %d", s, c.Entities)
	}
	// The rank → id permutation: rank k is entity perm[k-1].
	perm := make([]int64, c.Entities)
	for i := range perm {
		perm[i] = int64(i) + 1
	}
	prng := rand.New(rand.NewPCG(uint64(c.Seed), 0x7065726d)) //nolint:gosec // not for security
	prng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
	// math/rand (v1) has the Zipf sampler (rejection-inversion, O(1) a
	// draw); it yields k in [0, Entities-1] with P(k) ∝ (1 + k)^-s, rank k+1.
	zipf := randv1.NewZipf(randv1.New(v1Source{rand.NewPCG(uint64(c.Seed), 0x7a697066)}), s, 1, uint64(c.Entities-1)) //nolint:gosec // not for security
	return func(*rand.Rand) int64 { return perm[zipf.Uint64()] }, nil
}

// v1Source lets a math/rand/v2 PCG drive math/rand (v1)'s Zipf sampler.
type v1Source struct{ *rand.PCG }

// Int63 is the PCG's next 63 bits.
func (s v1Source) Int63() int64 { return int64(s.Uint64() >> 1) }

// Seed is not used: the PCG is seeded when made.
func (v1Source) Seed(int64) {}

// CSVHeader is the header of CSVRow's columns.
var CSVHeader = []string{"event_id", "entity_id", "occurred_at", "type", "amount", "quantity"}

// CSVRow renders the event as a CSV row in CSVHeader's order.
func (e Event) CSVRow() []string {
	return []string{e.ID, strconv.FormatInt(e.EntityID, 10), e.OccurredAt.Format(time.RFC3339), e.Type,
		formatUnits(e.Amount), strconv.FormatInt(e.Quantity, 10)}
}
