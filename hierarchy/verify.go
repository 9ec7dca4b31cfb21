package hierarchy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/prometheus/client_golang/prometheus"
)

// Why a hierarchy message was not applied (label reason of
// canopy_hierarchy_rejected_total).
const (
	// RejectMalformed: the value is not a hierarchy message at all.
	RejectMalformed = "malformed"
	// RejectUnknownSeq: PostgreSQL's history has no row with the message's
	// history_seq (a forged or foreign seq, such as a huge one).
	RejectUnknownSeq = "unknown_seq"
	// RejectMismatch: the history row with that seq says something else
	// (entity, parent, status, name or effective time).
	RejectMismatch = "mismatch"
)

// NewRejectedCounter registers canopy_hierarchy_rejected_total{reason} with
// reg (every reason starts at 0) and returns it, for Follower.Rejected.
func NewRejectedCounter(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "canopy_hierarchy_rejected_total",
		Help: "Hierarchy topic messages not applied because they do not match PostgreSQL's history, by reason (malformed, unknown_seq, mismatch).",
	}, []string{"reason"})
	for _, r := range []string{RejectMalformed, RejectUnknownSeq, RejectMismatch} {
		c.WithLabelValues(r)
	}
	reg.MustRegister(c)
	return c
}

// HistoryRow is a row of canopy.entity_history as far as a hierarchy
// message repeats it. The fields compared never change once written: a
// later correction only sets valid_to and superseded_by.
type HistoryRow struct {
	Change
	Name    string
	HasName bool // false: name is NULL
}

// History is PostgreSQL's history as the Follower checks messages against
// it. *Store implements it.
type History interface {
	// HistoryRows returns the rows with the given seqs (seqs with no row
	// are absent from the map) and the highest seq committed, from one
	// snapshot.
	HistoryRows(ctx context.Context, seqs []int64) (map[int64]HistoryRow, int64, error)
}

// HistoryRows implements History with one statement, whatever len(seqs).
// The relay's seqs come nearly consecutive, so the bulk of them is read as
// a range of the primary key (a tenth of the cost of probing each); the
// others (forged, say) are probed one by one. Extra rows in the range are
// returned too: a caller looks up the seqs it asked for.
func (s *Store) HistoryRows(ctx context.Context, seqs []int64) (map[int64]HistoryRow, int64, error) {
	lo, hi, rest := denseRange(seqs)
	rows, err := s.pool.Query(ctx, `
		with latest as (select coalesce(max(seq), 0) as seq from canopy.entity_history)
		select latest.seq, coalesce(h.seq, 0), coalesce(h.id, 0), coalesce(h.parent_id, 0),
		       case h.status when 'active' then 0 when 'suspended' then 1 when 'closed' then 2 else 255 end,
		       h.valid_from, h.name
		  from latest left join canopy.entity_history h
		    on h.seq between $2 and $3 or h.seq = any($1::bigint[])`, rest, lo, hi)
	if err != nil {
		return nil, 0, fmt.Errorf("hierarchy: history rows: %w", err)
	}
	defer rows.Close()
	out := make(map[int64]HistoryRow, len(seqs))
	var latest int64
	for rows.Next() {
		var (
			r      HistoryRow
			status pgtype.Int2
			from   pgtype.Timestamptz
			name   pgtype.Text
		)
		if err := rows.Scan(&latest, &r.Seq, &r.ID, &r.ParentID, &status, &from, &name); err != nil {
			return nil, 0, fmt.Errorf("hierarchy: history rows: %w", err)
		}
		if r.Seq == 0 {
			continue // no row matched: the left join's lone row
		}
		r.Status, r.ValidFrom = Status(status.Int16), fromTimestamptz(from)
		r.Name, r.HasName = name.String, name.Valid
		out[r.Seq] = r
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("hierarchy: history rows: %w", err)
	}
	return out, latest, nil
}

// denseRange splits seqs into the range [lo, hi] holding the most of them
// while at most twice as wide as the seqs it holds, and the seqs outside it
// (lo > hi: no range).
func denseRange(seqs []int64) (lo, hi int64, rest []int64) {
	if len(seqs) == 0 {
		return 1, 0, nil
	}
	sorted := slices.Clone(seqs)
	slices.Sort(sorted)
	// dense reports whether sorted[a..b] spans less than twice its count;
	// a span past MaxInt64 wraps negative and is not dense.
	dense := func(a, b int) bool {
		d := sorted[b] - sorted[a]
		return d >= 0 && d < 2*int64(b-a+1)
	}
	best, bestA, bestB := 0, 0, -1
	for a, b := 0, 0; b < len(sorted); b++ {
		for !dense(a, b) {
			a++
		}
		if b-a+1 > best {
			best, bestA, bestB = b-a+1, a, b
		}
	}
	lo, hi = sorted[bestA], sorted[bestB]
	for _, seq := range sorted {
		if seq < lo || seq > hi {
			rest = append(rest, seq)
		}
	}
	return lo, hi, rest
}

// received is a hierarchy message read from the topic and not yet decided.
type received struct {
	partition int32
	offset    int64
	row       HistoryRow // what the message claims
	recorded  time.Time
	attempts  int // lookups that did not find its seq yet
}

// decodeMessage reads a relay's message. An empty value (the relay's
// fencing record) is errEmpty.
func decodeMessage(value []byte) (HistoryRow, time.Time, error) {
	var m Message
	if len(value) == 0 {
		return HistoryRow{}, time.Time{}, errEmpty
	}
	if err := json.Unmarshal(value, &m); err != nil {
		return HistoryRow{}, time.Time{}, err
	}
	st, err := ParseStatus(m.Status)
	if err != nil {
		return HistoryRow{}, time.Time{}, err
	}
	r := HistoryRow{Change: Change{Seq: m.HistorySeq, ID: m.EntityID, Status: st}}
	if m.ParentID != nil {
		r.ParentID = *m.ParentID
	}
	if m.Name != nil {
		r.Name, r.HasName = *m.Name, true
	}
	if m.EffectiveAt != nil {
		if r.ValidFrom, err = time.Parse(time.RFC3339Nano, *m.EffectiveAt); err != nil {
			return HistoryRow{}, time.Time{}, err
		}
	}
	recorded, _ := time.Parse(time.RFC3339Nano, m.RecordedAt)
	return r, recorded, nil
}

var errEmpty = errors.New("empty")

// mismatch names the first field in which a message differs from its
// history row, "" when it matches. Times compare at PostgreSQL's
// microsecond resolution.
func mismatch(msg, pg HistoryRow) string {
	switch {
	case msg.ID != pg.ID:
		return fmt.Sprintf("entity_id %d, history has %d", msg.ID, pg.ID)
	case msg.ParentID != pg.ParentID:
		return fmt.Sprintf("parent_id %d, history has %d", msg.ParentID, pg.ParentID)
	case msg.Status != pg.Status:
		return fmt.Sprintf("status %s, history has %s", msg.Status, pg.Status)
	case micros(msg.ValidFrom) != micros(pg.ValidFrom):
		return fmt.Sprintf("effective_at %s, history has %s", fmtFrom(msg.ValidFrom), fmtFrom(pg.ValidFrom))
	case msg.HasName != pg.HasName || msg.Name != pg.Name:
		return "name differs" // names are not logged
	}
	return ""
}

func fmtFrom(t time.Time) string {
	if t.IsZero() {
		return "-infinity"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// Verification pacing. A message whose seq is above every committed one
// is looked up again, up to verifyAttempts times in all with waits doubling
// from verifyFirstWait (about 1.5 s in all), before it is rejected.
const (
	verifyAttempts  = 6
	verifyFirstWait = 50 * time.Millisecond
	// At most maxRejectLogs rejections are logged per rejectLogWindow; the
	// metric counts them all.
	maxRejectLogs   = 10
	rejectLogWindow = 10 * time.Second
)

// verifier applies to a Tree the hierarchy messages that match
// PostgreSQL's history, in topic order, and rejects the others.
type verifier struct {
	history  History
	tree     *Tree
	log      *slog.Logger
	rejected *prometheus.CounterVec // nil: not counted
	applied  func(time.Duration)    // see Follower.Applied
	attempts int                    // verifyAttempts unless set (tests)
	wait     time.Duration          // verifyFirstWait unless set (tests)

	queue   []received // in topic order
	errWait time.Duration

	logSince   time.Time // start of the current log window
	logged     int       // rejections logged in it
	suppressed int       // and not logged
}

// add queues a record's value for verification.
func (v *verifier) add(partition int32, offset int64, value []byte) {
	r, recorded, err := decodeMessage(value)
	if errors.Is(err, errEmpty) {
		return // the relay's fencing record
	}
	if err != nil {
		why := err.Error()
		if len(why) > 80 {
			why = strings.ToValidUTF8(why[:80], "") + "…"
		}
		v.reject(RejectMalformed, partition, offset, HistoryRow{}, why)
		return
	}
	v.queue = append(v.queue, received{partition: partition, offset: offset, row: r, recorded: recorded})
}

// pending reports whether messages wait for a later step.
func (v *verifier) pending() bool { return len(v.queue) > 0 }

// step looks up every queued message's seq in one query and decides, in
// topic order, all it can: a message that matches its history row is
// applied, one that does not (or names a seq that PostgreSQL does not
// have below its highest) is rejected. A message whose seq is above the
// highest committed seq may be ahead of a PostgreSQL replica that lags:
// it and every message after it stay queued, and step returns how long to
// wait before the next step; after verifyAttempts lookups it is rejected.
// A failed lookup decides nothing and returns a growing wait.
func (v *verifier) step(ctx context.Context) (time.Duration, error) {
	if len(v.queue) == 0 {
		return 0, nil
	}
	seqs := make([]int64, len(v.queue))
	for i, r := range v.queue {
		seqs[i] = r.row.Seq
	}
	pg, latest, err := v.history.HistoryRows(ctx, seqs)
	if err != nil {
		v.errWait = min(max(2*v.errWait, 100*time.Millisecond), 5*time.Second)
		return v.errWait, err
	}
	v.errWait = 0
	for len(v.queue) > 0 {
		r := &v.queue[0]
		row, found := pg[r.row.Seq]
		switch {
		case found:
			if why := mismatch(r.row, row); why != "" {
				v.reject(RejectMismatch, r.partition, r.offset, r.row, why)
				break
			}
			first := r.row.Seq > v.tree.Version() // not brought already by a load or poll
			if err := v.tree.Apply(row.Change); err != nil {
				v.log.Error("hierarchy change not applied", "seq", row.Seq, "entity", row.ID, "err", err)
				break
			}
			if first && v.applied != nil && !r.recorded.IsZero() {
				v.applied(time.Since(r.recorded))
			}
		case r.row.Seq <= latest:
			// Seqs are assigned under the hierarchy lock held to commit,
			// so a lower seq than a visible one is visible or never was.
			v.reject(RejectUnknownSeq, r.partition, r.offset, r.row, "no such history_seq")
		default:
			r.attempts++
			if r.attempts < v.maxAttempts() {
				return v.firstWait() << (r.attempts - 1), nil
			}
			v.reject(RejectUnknownSeq, r.partition, r.offset, r.row,
				fmt.Sprintf("history_seq above the highest committed (%d) after %d lookups", latest, r.attempts))
		}
		v.queue[0] = received{}
		v.queue = v.queue[1:]
	}
	v.queue = nil // let the decided backing array go
	return 0, nil
}

func (v *verifier) maxAttempts() int {
	if v.attempts > 0 {
		return v.attempts
	}
	return verifyAttempts
}

func (v *verifier) firstWait() time.Duration {
	if v.wait > 0 {
		return v.wait
	}
	return verifyFirstWait
}

// reject counts a message and logs where it is and why, never its payload,
// at most maxRejectLogs times per rejectLogWindow.
func (v *verifier) reject(reason string, partition int32, offset int64, claim HistoryRow, why string) {
	if v.rejected != nil {
		v.rejected.WithLabelValues(reason).Inc()
	}
	if now := time.Now(); now.Sub(v.logSince) >= rejectLogWindow {
		if v.suppressed > 0 {
			v.log.Warn("hierarchy messages rejected and not logged", "count", v.suppressed, "window", rejectLogWindow)
		}
		v.logSince, v.logged, v.suppressed = now, 0, 0
	}
	if v.logged >= maxRejectLogs {
		v.suppressed++
		return
	}
	v.logged++
	v.log.Warn("hierarchy message rejected: it does not match PostgreSQL's history",
		"reason", reason, "partition", partition, "offset", offset,
		"history_seq", claim.Seq, "entity", claim.ID, "detail", why)
}
