// Package backoff is the one pacing of Canopy's retries of transient
// faults: exponential from an initial wait, doubling up to a cap, with a
// little jitter so that workers retrying the same server do not do it in
// step. It wraps github.com/cenkalti/backoff/v5's ExponentialBackOff; every
// retry loop of ingest, hierarchy and the commands uses it rather than a
// doubling of its own.
//
// It owns no retry decision: what is transient is the caller's (one error
// classifier per protocol). It must not import any Canopy package.
package backoff

import (
	"context"
	"time"

	cb "github.com/cenkalti/backoff/v5"

	"github.com/canopyhq/canopy/internal/wait"
)

// Jitter is the randomization factor of every wait: a wait of d is drawn
// from [d·(1−Jitter), d·(1+Jitter)].
const Jitter = 0.2

// Backoff paces the attempts of one retry loop. Not safe for concurrent
// use; the zero value is not usable (use New).
type Backoff struct {
	b cb.ExponentialBackOff
}

// New returns a Backoff whose first wait is about initial and whose waits
// double up to about max.
func New(initial, max time.Duration) *Backoff {
	b := &Backoff{b: cb.ExponentialBackOff{
		InitialInterval:     initial,
		RandomizationFactor: Jitter,
		Multiplier:          2,
		MaxInterval:         max,
	}}
	b.b.Reset()
	return b
}

// Next returns the next wait and lengthens the one after it.
func (b *Backoff) Next() time.Duration { return b.b.NextBackOff() }

// Reset starts over from the initial wait, after a success.
func (b *Backoff) Reset() { b.b.Reset() }

// Wait sleeps the next wait and reports true, or false as soon as ctx ends.
func (b *Backoff) Wait(ctx context.Context) bool { return wait.Sleep(ctx, b.Next()) }
