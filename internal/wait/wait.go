// Package wait holds the one context-aware sleep that the retry loops of
// ingest and hierarchy share.
package wait

import (
	"context"
	"time"
)

// Sleep waits for d and reports true, or reports false as soon as ctx ends.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
