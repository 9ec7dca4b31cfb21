package hierarchy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// fakeHistory is PostgreSQL's history as a map; visible hides seqs above
// it (a lagging replica) until raised.
type fakeHistory struct {
	rows    map[int64]HistoryRow
	visible int64
	calls   int
	err     error
}

func (h *fakeHistory) HistoryRows(_ context.Context, seqs []int64) (map[int64]HistoryRow, int64, error) {
	h.calls++
	if h.err != nil {
		return nil, 0, h.err
	}
	out := map[int64]HistoryRow{}
	var latest int64
	for seq := range h.rows {
		if seq <= h.visible {
			latest = max(latest, seq)
		}
	}
	for _, s := range seqs {
		if r, ok := h.rows[s]; ok && s <= h.visible {
			out[s] = r
		}
	}
	return out, latest, nil
}

func (h *fakeHistory) add(r HistoryRow) {
	if h.rows == nil {
		h.rows = map[int64]HistoryRow{}
	}
	h.rows[r.Seq] = r
	h.visible = max(h.visible, r.Seq)
}

// msg is the relay's JSON for a history row, as relay.go writes it.
func msg(r HistoryRow) []byte {
	m := Message{OutboxSeq: r.Seq + 1000, HistorySeq: r.Seq, EntityID: r.ID, Op: "update", Status: r.Status.String(),
		RecordedAt: time.Now().UTC().Format(time.RFC3339Nano), Version: 1}
	if r.ParentID != 0 {
		p := r.ParentID
		m.ParentID = &p
	}
	if r.HasName {
		n := r.Name
		m.Name = &n
	}
	if !r.ValidFrom.IsZero() {
		s := r.ValidFrom.UTC().Format(time.RFC3339Nano)
		m.EffectiveAt = &s
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

type verifyFixture struct {
	h    *fakeHistory
	v    *verifier
	rej  *prometheus.CounterVec
	logs *bytes.Buffer
	off  int64
}

func newVerifyFixture(t *testing.T) *verifyFixture {
	t.Helper()
	f := &verifyFixture{h: &fakeHistory{}, logs: &bytes.Buffer{}}
	f.rej = NewRejectedCounter(prometheus.NewRegistry())
	f.v = &verifier{history: f.h, tree: NewTree(), log: slog.New(slog.NewTextHandler(f.logs, nil)),
		rejected: f.rej, attempts: 3, wait: time.Millisecond}
	return f
}

func (f *verifyFixture) send(value []byte) {
	f.v.add(0, f.off, value)
	f.off++
}

// drain steps until nothing is queued and returns the number of steps.
func (f *verifyFixture) drain(t *testing.T) int {
	t.Helper()
	for n := 1; ; n++ {
		if _, err := f.v.step(context.Background()); err != nil {
			t.Fatal(err)
		}
		if !f.v.pending() {
			return n
		}
		if n > 100 {
			t.Fatal("queue never drains")
		}
	}
}

func (f *verifyFixture) rejected(reason string) int {
	return counterValue(f.rej, reason)
}

var vt0 = time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC)

func row(seq, id, parent int64, st Status, from time.Time, name string) HistoryRow {
	return HistoryRow{Change: Change{Seq: seq, ID: id, ParentID: parent, Status: st, ValidFrom: from}, Name: name, HasName: name != ""}
}

func TestVerifyAppliesMatchingMessagesInOneLookup(t *testing.T) {
	f := newVerifyFixture(t)
	rows := []HistoryRow{
		row(1, 10, 0, StatusActive, time.Time{}, "root"),
		row(2, 11, 10, StatusActive, time.Time{}, ""),
		row(3, 12, 11, StatusSuspended, vt0, "leaf"),
		row(5, 12, 10, StatusSuspended, vt0.Add(time.Hour), "leaf"), // seq 4 rolled back
	}
	for _, r := range rows {
		f.h.add(r)
		f.send(msg(r))
	}
	f.send(nil) // the relay's fencing record: not a rejection
	if steps := f.drain(t); steps != 1 || f.h.calls != 1 {
		t.Fatalf("%d steps, %d lookups; want 1 and 1", steps, f.h.calls)
	}
	if v := f.v.tree.Version(); v != 5 {
		t.Fatalf("version %d, want 5", v)
	}
	if p, s, ok := f.v.tree.Current(12); !ok || p != 10 || s != StatusSuspended {
		t.Fatalf("entity 12 = %d %v %v; want under 10, suspended", p, s, ok)
	}
	// As-was: at vt0 + 1 min entity 12 was under 11.
	chain, ok := f.v.tree.Ancestors(12, vt0.Add(time.Minute), nil)
	if !ok || len(chain) != 3 || chain[1].ID != 11 {
		t.Fatalf("chain at vt0+1m = %v %v; want 12, 11, 10", chain, ok)
	}
	for _, r := range []string{RejectMalformed, RejectUnknownSeq, RejectMismatch} {
		if n := f.rejected(r); n != 0 {
			t.Errorf("rejected %s = %d, want 0", r, n)
		}
	}
}

func TestVerifyRejectsForgedHugeSeq(t *testing.T) {
	f := newVerifyFixture(t)
	f.h.add(row(1, 10, 0, StatusActive, time.Time{}, ""))
	f.h.add(row(2, 11, 10, StatusActive, time.Time{}, ""))
	f.send(msg(row(1, 10, 0, StatusActive, time.Time{}, "")))
	f.send(msg(row(1<<62, 11, 0, StatusClosed, vt0, ""))) // forged: far above any seq
	f.send(msg(row(2, 11, 10, StatusActive, time.Time{}, "")))
	steps := f.drain(t)
	// The forged seq is looked up f.v.attempts times (it might be a
	// replica's lag) before it is rejected; the genuine change after it waits.
	if steps != 3 {
		t.Errorf("%d steps, want 3 (attempts)", steps)
	}
	if v := f.v.tree.Version(); v != 2 {
		t.Fatalf("version %d, want 2: a forged seq must not move it", v)
	}
	if p, s, _ := f.v.tree.Current(11); p != 10 || s != StatusActive {
		t.Fatalf("entity 11 under %d (%v), want under 10, active", p, s)
	}
	if n := f.rejected(RejectUnknownSeq); n != 1 {
		t.Fatalf("unknown_seq rejections %d, want 1", n)
	}
	// A later genuine change still applies.
	f.h.add(row(3, 11, 0, StatusActive, vt0, ""))
	f.send(msg(row(3, 11, 0, StatusActive, vt0, "")))
	f.drain(t)
	if p, _, _ := f.v.tree.Current(11); p != 0 || f.v.tree.Version() != 3 {
		t.Fatalf("after change 3: entity 11 under %d, version %d; want root, 3", p, f.v.tree.Version())
	}
}

func TestVerifyRejectsMismatches(t *testing.T) {
	genuine := row(3, 12, 11, StatusActive, vt0, "leaf")
	cases := map[string]HistoryRow{
		"entity":    row(3, 13, 11, StatusActive, vt0, "leaf"),
		"parent":    row(3, 12, 10, StatusActive, vt0, "leaf"),
		"status":    row(3, 12, 11, StatusClosed, vt0, "leaf"),
		"effective": row(3, 12, 11, StatusActive, vt0.Add(time.Microsecond), "leaf"),
		"always":    row(3, 12, 11, StatusActive, time.Time{}, "leaf"),
		"name":      row(3, 12, 11, StatusActive, vt0, "leaf2"),
		"null name": row(3, 12, 11, StatusActive, vt0, ""),
	}
	for name, forged := range cases {
		t.Run(name, func(t *testing.T) {
			f := newVerifyFixture(t)
			f.h.add(row(1, 10, 0, StatusActive, time.Time{}, ""))
			f.h.add(row(2, 11, 10, StatusActive, time.Time{}, ""))
			f.h.add(genuine)
			f.send(msg(row(1, 10, 0, StatusActive, time.Time{}, "")))
			f.send(msg(row(2, 11, 10, StatusActive, time.Time{}, "")))
			f.send(msg(forged))
			if steps := f.drain(t); steps != 1 {
				t.Fatalf("%d steps, want 1: a mismatch is rejected at once", steps)
			}
			if n := f.rejected(RejectMismatch); n != 1 {
				t.Fatalf("mismatch rejections %d, want 1", n)
			}
			if v := f.v.tree.Version(); v != 2 {
				t.Fatalf("version %d, want 2", v)
			}
			// The genuine message for the same seq still applies.
			f.send(msg(genuine))
			f.drain(t)
			if p, s, ok := f.v.tree.Current(12); !ok || p != 11 || s != StatusActive || f.v.tree.Version() != 3 {
				t.Fatalf("entity 12 = under %d %v %v, version %d; want under 11, active, 3", p, s, ok, f.v.tree.Version())
			}
			if strings.Contains(f.logs.String(), "leaf2") {
				t.Fatalf("the log repeats the message's name:\n%s", f.logs)
			}
		})
	}
}

func TestVerifyUnknownSeqBelowLatestRejectedAtOnce(t *testing.T) {
	f := newVerifyFixture(t)
	f.h.add(row(1, 10, 0, StatusActive, time.Time{}, ""))
	f.h.add(row(5, 11, 10, StatusActive, time.Time{}, ""))
	f.send(msg(row(3, 11, 0, StatusActive, time.Time{}, ""))) // seq 3 never committed
	f.send(msg(row(5, 11, 10, StatusActive, time.Time{}, "")))
	if steps := f.drain(t); steps != 1 {
		t.Fatalf("%d steps, want 1", steps)
	}
	if n := f.rejected(RejectUnknownSeq); n != 1 {
		t.Fatalf("unknown_seq rejections %d, want 1", n)
	}
	if f.v.tree.Version() != 5 {
		t.Fatalf("version %d, want 5", f.v.tree.Version())
	}
}

func TestVerifyWaitsForALaggingHistory(t *testing.T) {
	f := newVerifyFixture(t)
	f.h.add(row(1, 10, 0, StatusActive, time.Time{}, ""))
	f.h.add(row(2, 11, 10, StatusActive, time.Time{}, ""))
	f.h.add(row(3, 11, 0, StatusActive, vt0, ""))
	f.h.visible = 1 // a replica behind the primary the relay read
	for seq := int64(1); seq <= 3; seq++ {
		f.send(msg(f.h.rows[seq]))
	}
	pause, err := f.v.step(context.Background())
	if err != nil || pause <= 0 || !f.v.pending() {
		t.Fatalf("step = %v, %v, pending %v; want a pause with messages pending", pause, err, f.v.pending())
	}
	if f.v.tree.Version() != 1 {
		t.Fatalf("version %d, want 1 (seq 2 and 3 wait)", f.v.tree.Version())
	}
	f.h.visible = 3 // the replica caught up
	f.drain(t)
	if f.v.tree.Version() != 3 || f.rejected(RejectUnknownSeq) != 0 {
		t.Fatalf("version %d, %d rejected; want 3, 0", f.v.tree.Version(), f.rejected(RejectUnknownSeq))
	}
}

func TestVerifyMalformed(t *testing.T) {
	f := newVerifyFixture(t)
	f.send([]byte("not json"))
	f.send([]byte(`{"history_seq": 1, "entity_id": 10, "status": "` + strings.Repeat("x", 500) + `"}`))
	f.send([]byte(`{"history_seq": 1, "entity_id": 10, "status": "active", "effective_at": "yesterday"}`))
	f.drain(t)
	if n := f.rejected(RejectMalformed); n != 3 {
		t.Fatalf("malformed rejections %d, want 3", n)
	}
	if strings.Contains(f.logs.String(), strings.Repeat("x", 100)) {
		t.Fatalf("the log repeats the payload:\n%s", f.logs)
	}
	if f.v.tree.Version() != 0 {
		t.Fatalf("version %d, want 0", f.v.tree.Version())
	}
}

func TestVerifyLookupFailureDecidesNothing(t *testing.T) {
	f := newVerifyFixture(t)
	f.h.add(row(1, 10, 0, StatusActive, time.Time{}, ""))
	f.send(msg(f.h.rows[1]))
	f.h.err = errors.New("postgres down")
	for i := 0; i < 5; i++ { // past the attempts for an unseen seq
		if pause, err := f.v.step(context.Background()); err == nil || pause <= 0 {
			t.Fatalf("step = %v, %v; want an error and a pause", pause, err)
		}
	}
	if !f.v.pending() || f.v.tree.Version() != 0 {
		t.Fatalf("pending %v, version %d; want the message kept", f.v.pending(), f.v.tree.Version())
	}
	f.h.err = nil
	f.drain(t)
	if f.v.tree.Version() != 1 {
		t.Fatalf("version %d, want 1", f.v.tree.Version())
	}
}

func TestVerifyRejectLogsBounded(t *testing.T) {
	f := newVerifyFixture(t)
	f.h.add(row(100, 10, 0, StatusActive, time.Time{}, ""))
	for i := int64(1); i <= 50; i++ {
		f.send(msg(row(i, 10, 0, StatusActive, time.Time{}, ""))) // no such seqs
	}
	f.drain(t)
	if n := f.rejected(RejectUnknownSeq); n != 50 {
		t.Fatalf("rejections %d, want 50", n)
	}
	if lines := strings.Count(f.logs.String(), "hierarchy message rejected"); lines != maxRejectLogs {
		t.Fatalf("%d rejection log lines, want %d", lines, maxRejectLogs)
	}
}

// counterValue reads one label of a counter vector.
func counterValue(c *prometheus.CounterVec, label string) int {
	var m dto.Metric
	if err := c.WithLabelValues(label).Write(&m); err != nil {
		panic(err)
	}
	return int(m.GetCounter().GetValue())
}

func TestDenseRange(t *testing.T) {
	consecutive := make([]int64, 0, 1000)
	for s := int64(5000); s < 6000; s++ {
		if s%97 != 0 { // gaps of rolled-back changes
			consecutive = append(consecutive, s)
		}
	}
	cases := []struct {
		name   string
		seqs   []int64
		lo, hi int64
		rest   []int64
	}{
		{"empty", nil, 1, 0, nil},
		{"one", []int64{7}, 7, 7, nil},
		{"relayed", consecutive, 5000, 5999, nil},
		{"forged around", append([]int64{1 << 62, -1 << 63, 3, 1<<63 - 1}, consecutive...), 5000, 5999,
			[]int64{-1 << 63, 3, 1 << 62, 1<<63 - 1}},
		{"sparse", []int64{10, 100, 1000}, 10, 10, []int64{100, 1000}},
	}
	for _, c := range cases {
		lo, hi, rest := denseRange(c.seqs)
		if lo != c.lo || hi != c.hi || fmt.Sprint(rest) != fmt.Sprint(c.rest) {
			t.Errorf("%s: [%d, %d] + %v; want [%d, %d] + %v", c.name, lo, hi, rest, c.lo, c.hi, c.rest)
		}
	}
}
