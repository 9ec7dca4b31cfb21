package ingest

import (
	"context"
	"time"
)

// Ancestor is one link of an entity's chain as it was at an event's time.
type Ancestor struct {
	ID        int64
	Depth     uint8 // 0 = the entity itself
	Suspended bool  // suspended or closed at that time
}

// Resolver answers ancestor chains from the hierarchy. Implementations must
// be safe for concurrent use.
type Resolver interface {
	// Ancestors appends the chain of id (self first, then parent … root) as
	// it was at `at`, using only hierarchy changes up to and including
	// version asOf, so that a replayed batch resolves exactly as the first
	// attempt did. ok is false when id is unknown at that version.
	Ancestors(id int64, at time.Time, asOf int64, dst []Ancestor) (chain []Ancestor, ok bool)
	// Version is the newest hierarchy change applied.
	Version() int64
}

// LatestResolver is a Resolver that also tells, with a chain, that every
// link is its entity's latest version as of asOf: the chain is then the
// entity's chain as the hierarchy is at asOf (as-is, at EndOfTime), and a
// batch need not resolve that one too.
type LatestResolver interface {
	AncestorsLatest(id int64, at time.Time, asOf int64, dst []Ancestor) (chain []Ancestor, ok, latest bool)
}

// Warmer is implemented by a Resolver that answers a run of look-ups
// faster when told their entities first. The processor calls Warm with a
// few hundred events' entities before resolving them: it may read ahead
// what their look-ups will read, and return, as r, a Resolver that takes no
// lock per look-up. r answers as the Resolver would, and is used for those
// look-ups only; until done, nothing else of the Resolver is called (it may
// hold a read lock).
type Warmer interface {
	Warm(ids []int64) (r Resolver, done func())
}

// Refresher is implemented by a Resolver that can catch up with its store
// on demand. Before a batch dead-letters an event for an unknown entity, the
// processor asks it to catch up once: an entity created a moment before its
// first event must not depend on the follower's polling interval.
type Refresher interface {
	// Refresh applies every change committed so far and returns the new
	// version.
	Refresh(ctx context.Context) (int64, error)
}

// SuspendedPolicy says whether a suspended (or closed) ancestor receives its
// downline's rollups. An entity's own events (depth 0) always count.
type SuspendedPolicy int

const (
	// SuspendedInclude: suspended ancestors still receive rollups (default).
	SuspendedInclude SuspendedPolicy = iota
	// SuspendedSkip: a suspended ancestor's row is skipped; the walk goes on
	// above it with depths unchanged.
	SuspendedSkip
)

// EndOfTime is later than any event: the hierarchy "as it is" at a version
// is its state at EndOfTime (changes never take effect in the future).
var EndOfTime = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// expand returns the chain of ev's entity as it was at the event's time,
// with the policy applied; latest reports that it is also the chain as the
// hierarchy is at asOf (what expandCurrent returns).
func expand(r Resolver, ev *Event, asOf int64, policy SuspendedPolicy, buf []Ancestor) (_ []Ancestor, ok, latest bool) {
	lr, can := r.(LatestResolver)
	if !can {
		chain, ok := Chain(r, ev.EntityID, ev.OccurredAt, asOf, policy, buf)
		return chain, ok, false
	}
	chain, ok, latest := lr.AncestorsLatest(ev.EntityID, ev.OccurredAt, asOf, buf[:0])
	if !ok {
		return chain, false, false
	}
	return withPolicy(chain, policy), true, latest
}

// expandCurrent returns the chain of ev's entity as the hierarchy is at
// version asOf (as-is), with the policy applied to the current statuses.
func expandCurrent(r Resolver, ev *Event, asOf int64, policy SuspendedPolicy, buf []Ancestor) ([]Ancestor, bool) {
	return Chain(r, ev.EntityID, EndOfTime, asOf, policy, buf)
}

// Chain appends the chain of id at time at, using hierarchy changes up to
// asOf, with the policy applied: what a batch resolved with version asOf
// attributes an event of id at `at` to.
func Chain(r Resolver, id int64, at time.Time, asOf int64, policy SuspendedPolicy, buf []Ancestor) ([]Ancestor, bool) {
	chain, ok := r.Ancestors(id, at, asOf, buf[:0])
	if !ok {
		return chain, false
	}
	return withPolicy(chain, policy), true
}

// withPolicy is chain with the policy applied (in place).
func withPolicy(chain []Ancestor, policy SuspendedPolicy) []Ancestor {
	if policy == SuspendedInclude {
		return chain
	}
	out := chain[:1]
	for _, a := range chain[1:] {
		if !a.Suspended {
			out = append(out, a)
		}
	}
	return out
}

// SameLinks reports whether two chains name the same entities at the same
// depths.
func SameLinks(a, b []Ancestor) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].Depth != b[i].Depth {
			return false
		}
	}
	return true
}
