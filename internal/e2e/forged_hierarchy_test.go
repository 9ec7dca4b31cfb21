package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/internal/synth"
)

// TestForgedHierarchyMessages is the living-hierarchy oracle with an
// attacker on the hierarchy topic. While events flow and the hierarchy
// changes the normal way (SQL and CLI, outbox, relay), messages are written
// straight to the topic in the relay's format and headers: a huge
// history_seq moving the busiest subtree under another root as a back-dated
// correction, real seqs claiming another parent, entity or effective time,
// a seq a rolled-back change consumed, other formats, and duplicates of the
// relay's own messages. Afterwards the rollups must equal an oracle built
// from PostgreSQL's history (where the forged moves never happened), and
// each worker's canopy_hierarchy_rejected_total must count exactly the
// forgeries, by reason; duplicates of real messages and an empty value are
// not rejections.
func TestForgedHierarchyMessages(t *testing.T) {
	const nEntities, nEvents, nChanges = 800, 9000, 45
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 4)
	hTopic := e.name + ".hierarchy"
	e.vars = append(e.vars, "CANOPY_KAFKA_HIERARCHY_TOPIC="+hTopic)
	t.Cleanup(func() {
		if !t.Failed() {
			_, _ = e.admin.DeleteTopics(context.Background(), hTopic)
		}
	})
	l := newLiving(t, e, nEntities, seed, 15)
	rng := l.rng

	// The relay publishes the import before the workers start, so they
	// follow an existing topic from its end and see every forgery. (A
	// restarted relay passes forged records over:
	// TestRelayResumesPastForgedRecords.)
	_ = e.startRelay(0)
	e.waitRelayed(hTopic, e.maxOutboxSeq())
	var addrs []string
	metricsRe := regexp.MustCompile(`metrics=http://(\S+)/metrics`)
	for i := 1; i <= 2; i++ {
		w := e.startWorker(i)
		// Logged once the worker follows the topic (its end offsets are
		// taken before it loads the tree).
		addrs = append(addrs, waitLogMatch(t, w.log, metricsRe))
	}

	f := &forger{t: t, e: e, topic: hTopic, want: map[string]int{}, sent: map[string]bool{}}
	start := time.Date(2026, 10, 27, 0, 0, 0, 0, time.UTC)
	span := 8 * 24 * time.Hour
	types := []string{"sale", "refund", "signup"}
	events := map[string]synth.Event{}
	nRecs, perRnd := 0, nEvents/nChanges
	for round := 0; round < nChanges; round++ {
		keys, values := make([][]byte, 0, perRnd), make([][]byte, 0, perRnd)
		for i := 0; i < perRnd; i++ {
			ev := synth.Event{
				ID:         fmt.Sprintf("fh-%d-%d", round, i),
				EntityID:   l.ids[rng.IntN(len(l.ids))],
				OccurredAt: start.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Second),
				Type:       types[rng.IntN(len(types))],
				Amount:     rng.Int64N(20_000_000) - 2_000_000,
				Quantity:   rng.Int64N(10),
			}
			events[ev.ID] = ev
			keys = append(keys, []byte(strconv.FormatInt(ev.EntityID, 10)))
			values = append(values, ev.JSON())
		}
		e.produce(keys, values)
		nRecs += len(values)
		if rng.IntN(10) < 3 {
			l.change(nil, start.Add(span))
		} else {
			at := start.Add(span * time.Duration(round+1) / time.Duration(nChanges+1)).Add(time.Duration(rng.IntN(3600)) * time.Second).Truncate(time.Second)
			l.change(&at, start.Add(span))
		}
		switch round {
		case nChanges / 4:
			f.firstWave(l, start)
		case nChanges / 2:
			f.secondWave(l)
		case 3 * nChanges / 4:
			f.thirdWave(l, start)
		}
	}
	t.Logf("%d records, %d hierarchy changes (%d refused for a cycle); forged %v, %d duplicates of real messages, 1 empty value",
		nRecs, l.counter, l.refused, f.want, f.dups)
	e.waitAcked(uint64(nRecs), 5*time.Minute)
	e.waitRestated(5 * time.Minute)

	// No forged seq became a worker's hierarchy version: each stands at
	// PostgreSQL's newest change.
	latest := f.seqOf("select max(seq) from canopy.entity_history")
	for i, addr := range addrs {
		e.waitGauge(addr, "canopy_hierarchy_version", float64(latest))
		f.checkRejected(i+1, addr)
	}

	// The oracle reads PostgreSQL's history, where no forged change is.
	h := e.pgHistory()
	hourly, daily := attribute(h, events, false, false)
	_, current := attribute(h, events, true, false)
	compareRollups(t, "rollup_hourly", hourly, e.readRollup("rollup_hourly", "toUInt32(bucket)"))
	compareRollups(t, "rollup_daily", daily, e.readRollup("rollup_daily", "toUInt32(toUInt32(bucket) * 86400)"))
	compareRollups(t, "rollup_daily_current", current, e.readRollup("rollup_daily_current", "toUInt32(toUInt32(bucket) * 86400)"))
	e.compareEvents(events)
	// PostgreSQL holds exactly the changes the test made, and ClickHouse's
	// entities follow it.
	e.compareEntities(l)
}

// forger writes to the hierarchy topic as anyone allowed to produce there
// could, and counts what each worker must reject, by reason.
type forger struct {
	t     *testing.T
	e     *env
	topic string
	want  map[string]int  // expected rejections by reason
	sent  map[string]bool // values forged so far, not to be taken for real ones
	dups  int             // duplicates of real messages sent
	busy  int64           // the entity the huge seqs move
	other int64           // the root they claim it moved under
}

// send produces one forged record with the relay's key and header.
func (f *forger) send(reason string, key int64, outboxSeq int64, value []byte) {
	f.t.Helper()
	rec := &kgo.Record{Topic: f.topic, Key: []byte(strconv.FormatInt(key, 10)), Value: value,
		Headers: []kgo.RecordHeader{{Key: hierarchy.HeaderOutboxSeq, Value: []byte(strconv.FormatInt(outboxSeq, 10))}}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.e.kafka.ProduceSync(ctx, rec).FirstErr(); err != nil {
		f.t.Fatalf("produce forged message: %v", err)
	}
	f.sent[string(value)] = true
	if reason != "" {
		f.want[reason]++
	}
}

func (f *forger) sendMsg(reason string, m hierarchy.Message) {
	f.t.Helper()
	m.RecordedAt = time.Now().UTC().Format(time.RFC3339Nano)
	m.Published, m.Version, m.Relay = m.RecordedAt, 1, "relay"
	b, err := json.Marshal(m)
	if err != nil {
		f.t.Fatal(err)
	}
	f.send(reason, m.EntityID, m.OutboxSeq, b)
}

// real returns the message the relay publishes for history row seq.
func (f *forger) real(seq int64) hierarchy.Message {
	f.t.Helper()
	m := hierarchy.Message{Op: "update"}
	var from pgtype.Timestamptz
	err := f.e.pg.QueryRow(context.Background(), `
		select h.seq, coalesce(o.seq, 0), h.id, h.parent_id, h.status, h.name, h.valid_from
		  from canopy.entity_history h left join canopy.outbox o on o.history_seq = h.seq
		 where h.seq = $1`, seq).Scan(&m.HistorySeq, &m.OutboxSeq, &m.EntityID, &m.ParentID, &m.Status, &m.Name, &from)
	if err != nil {
		f.t.Fatalf("history row %d: %v", seq, err)
	}
	if from.InfinityModifier == pgtype.Finite {
		s := from.Time.UTC().Format(time.RFC3339Nano)
		m.EffectiveAt = &s
	}
	return m
}

// seqOf returns a history seq: the latest change, or the first of an entity.
func (f *forger) seqOf(query string, args ...any) int64 {
	f.t.Helper()
	var seq int64
	if err := f.e.pg.QueryRow(context.Background(), query, args...).Scan(&seq); err != nil {
		f.t.Fatalf("%s: %v", query, err)
	}
	return seq
}

// firstWave, a quarter into the run: the huge seq that would freeze every
// worker's tree with the busiest subtree under another root since before
// any event, a recent real seq with another parent, and two messages in
// foreign formats.
func (f *forger) firstWave(l *living, start time.Time) {
	f.t.Helper()
	best := 0
	for _, id := range l.ids {
		if l.current(id).parent == 0 {
			continue
		}
		if n := l.subtreeSize(id); n > best {
			f.busy, best = id, n
		}
	}
	root := f.busy
	for l.current(root).parent != 0 {
		root = l.current(root).parent
	}
	for _, id := range l.ids {
		if l.current(id).parent == 0 && id != root && l.current(id).status == "active" {
			f.other = id
			break
		}
	}
	if f.busy == 0 || f.other == 0 {
		f.t.Fatalf("no busy entity (%d) or other root (%d) to forge a move with", f.busy, f.other)
	}
	l.log = append(l.log, fmt.Sprintf("(forged: %d, holding %d entities, under %d with seq 2^60)", f.busy, best, f.other))
	m := f.real(f.seqOf("select min(seq) from canopy.entity_history where id = $1", f.busy))
	m.HistorySeq, m.OutboxSeq, m.ParentID = 1<<60, 1<<60, &f.other
	back := start.Add(-24 * time.Hour).Format(time.RFC3339Nano)
	m.EffectiveAt = &back
	f.sendMsg(hierarchy.RejectUnknownSeq, m)

	latest := f.real(f.seqOf("select max(seq) from canopy.entity_history"))
	wrong := f.other
	if latest.ParentID != nil && *latest.ParentID == wrong {
		wrong = f.busy
	}
	latest.ParentID = &wrong
	f.sendMsg(hierarchy.RejectMismatch, latest)

	f.send(hierarchy.RejectMalformed, f.busy, 0, []byte("{not json"))
	// A change-data-capture envelope: JSON, but no status.
	f.send(hierarchy.RejectMalformed, f.busy, 0,
		[]byte(fmt.Sprintf(`{"before":{"id":%d},"after":{"id":%d,"parent_id":%d},"op":"u","source":{"table":"entities"}}`, f.busy, f.busy, f.other)))
}

// secondWave, half way: duplicates of the relay's messages (the last ones
// and some of the import), which match their history rows and change
// nothing; a seq consumed by a rolled-back change; another entity claimed
// under a real seq; an older format without history_seq; and an empty
// value, which the follower takes for the relay's fencing record.
func (f *forger) secondWave(l *living) {
	f.t.Helper()
	var recs []*kgo.Record
	for _, r := range f.e.hierarchyRecords(f.topic) {
		if !f.sent[string(r.Value)] {
			recs = append(recs, r)
		}
	}
	if len(recs) < 40 {
		f.t.Fatalf("hierarchy topic holds %d records", len(recs))
	}
	var dup []*kgo.Record
	dup = append(dup, recs[:10]...)
	dup = append(dup, recs[len(recs)-15:]...)
	for _, r := range dup {
		if err := f.e.kafka.ProduceSync(context.Background(),
			&kgo.Record{Topic: f.topic, Key: r.Key, Value: r.Value, Headers: r.Headers}).FirstErr(); err != nil {
			f.t.Fatalf("produce duplicate: %v", err)
		}
		f.dups++
	}

	ctx := context.Background()
	tx, err := f.e.pg.Begin(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	var gap int64
	if _, err := tx.Exec(ctx, "insert into canopy.entities (id, parent_id) values (99999999, $1)", f.other); err != nil {
		f.t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "select max(seq) from canopy.entity_history").Scan(&gap); err != nil {
		f.t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		f.t.Fatal(err)
	}
	l.log = append(l.log, fmt.Sprintf("(forged: seq %d of a rolled-back change)", gap))
	m := hierarchy.Message{OutboxSeq: gap, HistorySeq: gap, EntityID: 99999999, Op: "insert", ParentID: &f.other, Status: "active"}
	f.sendMsg(hierarchy.RejectUnknownSeq, m)

	m = f.real(f.seqOf("select max(seq) from canopy.entity_history"))
	if m.EntityID == f.busy {
		m.EntityID = f.other
	} else {
		m.EntityID = f.busy
	}
	f.sendMsg(hierarchy.RejectMismatch, m)

	// No history_seq: it decodes, as seq 0, which PostgreSQL never has.
	f.send(hierarchy.RejectUnknownSeq, f.busy, 0,
		[]byte(fmt.Sprintf(`{"entity_id":%d,"parent_id":%d,"status":"active"}`, f.busy, f.other)))
	f.send("", f.busy, 0, nil)
}

// thirdWave, three quarters in: the largest seq there is, a negative one,
// the import row of the busy entity claiming a back-dated effective time,
// and a binary (Avro-framed) value and a timestamp no parser takes.
func (f *forger) thirdWave(l *living, start time.Time) {
	f.t.Helper()
	l.log = append(l.log, "(forged: third wave)")
	m := f.real(f.seqOf("select max(seq) from canopy.entity_history where id = $1", f.busy))
	m.HistorySeq, m.OutboxSeq, m.ParentID = math.MaxInt64, math.MaxInt64, &f.other
	f.sendMsg(hierarchy.RejectUnknownSeq, m)
	m.HistorySeq, m.OutboxSeq = -7, -7
	f.sendMsg(hierarchy.RejectUnknownSeq, m)

	m = f.real(f.seqOf("select min(seq) from canopy.entity_history where id = $1", f.busy))
	back := start.Add(48 * time.Hour).Format(time.RFC3339Nano)
	m.EffectiveAt = &back
	f.sendMsg(hierarchy.RejectMismatch, m)

	f.send(hierarchy.RejectMalformed, f.busy, 0, []byte{0, 0, 0, 0, 42, 2, 0x0e, 's', 'a', 'l', 'e', 0xff})
	f.send(hierarchy.RejectMalformed, f.busy, 0,
		[]byte(fmt.Sprintf(`{"history_seq":1,"entity_id":%d,"parent_id":%d,"status":"active","effective_at":"yesterday"}`, f.busy, f.other)))
}

// checkRejected waits until worker i's canopy_hierarchy_rejected_total
// counts what was forged, then requires it to be exactly that, by reason.
func (f *forger) checkRejected(i int, addr string) {
	f.t.Helper()
	reasons := []string{hierarchy.RejectMalformed, hierarchy.RejectMismatch, hierarchy.RejectUnknownSeq}
	got := map[string]float64{}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		m, err := scrapeErr(addr)
		if err != nil {
			continue
		}
		done := true
		for _, r := range reasons {
			got[r] = m[fmt.Sprintf("canopy_hierarchy_rejected_total{reason=%q}", r)]
			done = done && got[r] >= float64(f.want[r])
		}
		if done {
			break
		}
	}
	for _, r := range reasons {
		if got[r] != float64(f.want[r]) {
			f.t.Errorf("worker %d: canopy_hierarchy_rejected_total{reason=%q} = %v, forged %d", i, r, got[r], f.want[r])
		}
	}
}

// hierarchyRecords reads the hierarchy topic read_committed from its start
// until a poll brings nothing for a second.
func (e *env) hierarchyRecords(topic string) []*kgo.Record {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.svc.brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(200*time.Millisecond),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			return out
		}
		fs.EachRecord(func(r *kgo.Record) {
			if len(r.Value) > 0 {
				out = append(out, r)
			}
		})
	}
}

// pgHistory reads every entity's live versions (not superseded by a
// back-dated correction) from canopy.entity_history: the hierarchy as
// PostgreSQL recorded it, for the oracle.
func (e *env) pgHistory() history {
	e.t.Helper()
	rows, err := e.pg.Query(context.Background(), `
		select id, coalesce(parent_id, 0), status, valid_from from canopy.entity_history
		 where superseded_by is null order by id, valid_from, seq`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	h := history{}
	for rows.Next() {
		var (
			id   int64
			v    version
			from pgtype.Timestamptz
		)
		if err := rows.Scan(&id, &v.parent, &v.status, &from); err != nil {
			e.t.Fatal(err)
		}
		if from.InfinityModifier == pgtype.Finite {
			v.from = from.Time.UTC()
		}
		h[id] = append(h[id], v)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return h
}
