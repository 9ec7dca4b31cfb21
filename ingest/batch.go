package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/wait"
	"github.com/canopyhq/canopy/schema"
)

// Record is one source record: what the processor needs of a Kafka record
// (or of a line of a backfill file).
type Record struct {
	Topic     string
	TopicID   string // see Source.TopicID
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []kgo.RecordHeader // canopy.* headers of retried and replayed records
	Time      time.Time          // the Kafka record's timestamp; zero for files
}

// Processor turns a contiguous run of one partition's records into a written,
// acknowledged batch. It is the exactly-once core shared by the worker and
// other sources; docs/exactly-once.md walks through it step by step.
// A Processor is safe for concurrent use on different partitions.
type Processor struct {
	Decoder   *Decoder
	Resolver  Resolver
	Ledger    Ledger
	Sink      Sink
	DLQ       DeadLetters
	Suspended SuspendedPolicy
	Retry     RetryPolicy
	Metrics   *Metrics // may be nil
	// Observer, if set, is told the counts and dead letters of every batch
	// this Processor writes (not of batches found done).
	Observer func(c Counts, dead []Failure)
	Log      *slog.Logger
	Now      func() time.Time // default time.Now
	// MaxBatchRecords and MaxBatchBytes (of record values) cap a new batch;
	// 0 means no cap. A batch recorded earlier is replayed whole whatever
	// its size.
	MaxBatchRecords int
	MaxBatchBytes   int
	// MaxTypes caps the distinct event types of one batch: type is in
	// every rollup key, so unbounded types would stop the rollups from
	// aggregating. Events of types past the cap (in offset order) are
	// dead-lettered as too_many_types. 0 means DefaultMaxTypes, negative no
	// cap.
	MaxTypes int
	// ReplayVerifyAfter is the age of an intent past which its replay asks
	// the Sink which of its parts are written rather than relying on
	// ClickHouse's deduplication window (see Landed); default
	// DefaultReplayVerifyAfter, negative for never.
	ReplayVerifyAfter time.Duration
	// Grains are the configured as-was grains (schema.ParseGrains); nil
	// means schema.DefaultGrains. Those coarser than daily are summed
	// into Batch.Coarser.
	Grains []schema.Grain
}

// Process handles a prefix of recs (same topic and partition, increasing
// offsets) and returns how many records it consumed; the caller commits the
// offset after them. It consumes nothing (0, nil) when recs stop short of a
// batch an earlier attempt recorded: the caller waits for more records.
// While canopy rebuild pauses new batches it waits and tries again.
func (p *Processor) Process(ctx context.Context, epoch int64, recs []Record) (int, error) {
	return p.ProcessWithin(ctx, epoch, recs, 0)
}

// ProcessWithin is Process with a new batch also capped at maxBytes of
// record values (0: only MaxBatchBytes caps it). A batch recorded earlier
// is replayed whole whatever its size.
func (p *Processor) ProcessWithin(ctx context.Context, epoch int64, recs []Record, maxBytes int) (int, error) {
	for {
		n, err := p.process(ctx, epoch, recs, maxBytes)
		if !errors.Is(err, ErrPaused) {
			return n, err
		}
		// rebuild lifts the pause within seconds, or it lapses by itself.
		p.Metrics.batchError("paused")
		if !wait.Sleep(ctx, 250*time.Millisecond) {
			return 0, ctx.Err()
		}
	}
}

func (p *Processor) process(ctx context.Context, epoch int64, recs []Record, maxBytes int) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	first := recs[0]
	in, found, err := p.Ledger.Intent(ctx, Source{Topic: first.Topic, TopicID: first.TopicID, Partition: first.Partition, First: first.Offset, Last: recs[len(recs)-1].Offset})
	if err != nil {
		return 0, err
	}
	if found && in.First > first.Offset {
		// A batch recorded earlier starts inside these records (a backfill
		// over a wider range than before, offsets moved by hand): stop
		// before it, or its records would count twice.
		recs = recs[:cut(recs, in.First-1)]
		found = false
	}
	if found && in.Done {
		// Everything of that batch, ack included, is written; only the
		// offset commit was lost. Skip its records.
		if n := cut(recs, in.Last); n >= 0 {
			return n, nil
		}
		return len(recs), nil
	}
	if found && in.First != first.Offset {
		return 0, fmt.Errorf("%w: %s/%d offset %d is inside batch %d…%d", ErrOverlap, first.Topic, first.Partition, first.Offset, in.First, in.Last)
	}
	if !found {
		// Records from the retry topic wait until they are due; only the
		// due prefix makes a batch.
		due := p.batchLen(recs, maxBytes)
		if due == 0 {
			return 0, nil
		}
		recs = recs[:due]
		in = Intent{
			Source:           Source{Topic: first.Topic, TopicID: first.TopicID, Partition: first.Partition, First: first.Offset, Last: recs[len(recs)-1].Offset},
			HierarchyVersion: p.Resolver.Version(),
			CreatedAt:        p.now().UTC().Truncate(time.Second),
			Fingerprint:      p.Fingerprint(),
		}
	}
	refreshed := false
	for {
		n := cut(recs, in.Last)
		if n < 0 {
			return 0, nil // the recorded batch is longer than what was fetched so far
		}
		got, again, err := p.attempt(ctx, epoch, in, recs[:n], !refreshed)
		refreshed = true
		if err != nil {
			return 0, fmt.Errorf("%s/%d offsets %d…%d: %w", in.Topic, in.Partition, in.First, in.Last, err)
		}
		if again {
			in = got // another attempt recorded this batch first: replay it exactly
			continue
		}
		return n, nil
	}
}

// batchLen is how many of recs a new batch takes: the records due now (a
// retry waits for its time, but never longer than the retry policy's
// MaxBackoff after it was published), within MaxBatchRecords, MaxBatchBytes
// and maxBytes when it is not 0 (at least one record).
func (p *Processor) batchLen(recs []Record, maxBytes int) int {
	now := p.now()
	capBytes := p.MaxBatchBytes
	if maxBytes > 0 && (capBytes <= 0 || maxBytes < capBytes) {
		capBytes = maxBytes
	}
	maxDelay := p.Retry.withDefaults().MaxBackoff
	size := 0
	for i, r := range recs {
		if at := retryAtOf(r); !at.IsZero() {
			if !r.Time.IsZero() && at.After(r.Time.Add(maxDelay)) {
				at = r.Time.Add(maxDelay) // a due time past the policy is not Canopy's
			}
			if at.After(now) {
				return i
			}
		}
		size += len(r.Value)
		if i > 0 && (p.MaxBatchRecords > 0 && i >= p.MaxBatchRecords || capBytes > 0 && size > capBytes) {
			return i
		}
	}
	return len(recs)
}

// blockFormat numbers the layout of the blocks a batch writes. Bump it with
// any change of code that makes the same records and intent write other
// bytes (columns, row order, the ingest_unit marks): a batch begun by the
// older code is then refused a replay by the newer (ErrReplayMismatch)
// rather than written twice. 2: the unit names the intent's time.
const blockFormat = 2

// DefaultMaxTypes is Processor.MaxTypes' default.
const DefaultMaxTypes = 1000

func (p *Processor) maxTypes() int {
	if p.MaxTypes == 0 {
		return DefaultMaxTypes
	}
	return p.MaxTypes
}

// DefaultReplayVerifyAfter is Processor.ReplayVerifyAfter's default.
const DefaultReplayVerifyAfter = 5 * time.Minute

// Fingerprint names what, besides its records, hierarchy version and time,
// decides the blocks a batch writes: the block format, the measures and the
// suspended-ancestors policy. Begin records it with the intent.
func (p *Processor) Fingerprint() string {
	var b strings.Builder
	fmt.Fprintf(&b, "format=%d suspended=%d measures=", blockFormat, p.Suspended)
	for i, m := range p.Decoder.measures {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s:%s:%d", m.Name, m.Kind, m.Scale)
	}
	if n := p.maxTypes(); n != DefaultMaxTypes {
		fmt.Fprintf(&b, " types=%d", n) // only when set: the default's fingerprint predates the cap
	}
	if !schema.IsDefaultGrains(p.Grains) {
		fmt.Fprintf(&b, " grains=%s", schema.GrainNames(p.Grains)) // likewise: the default's predates grains
	}
	return b.String()
}

// cut returns how many records have offsets <= last, or -1 when the records
// do not reach last.
func cut(recs []Record, last int64) int {
	if recs[len(recs)-1].Offset < last {
		return -1
	}
	for i, r := range recs {
		if r.Offset > last {
			return i
		}
	}
	return len(recs)
}

type decoded struct {
	ev      Event
	offset  int64
	chain   []Ancestor // as-was
	current []Ancestor // as-is, when it differs from chain
}

// replayed is a record of a batch replayed from the dead letters (canopy dlq
// replay) that decoded and resolved: if it owns its id, its success marks
// the failure its headers name resolved.
type replayed struct {
	offset   int64
	key, raw []byte
	origin   Origin
}

// records is one attempt's records as step 2 leaves them; the later steps
// read it.
type records struct {
	every    bool      // the Ledger claims every decoded record (claimsEveryDecoded)
	valid    []decoded // decoded, expanded and, unless every, first of their id in the batch
	failures []Failure
	failedAt []int64 // offset of each failure's record
	claims   []Claim
	replays  []replayed
	counts   Counts
	// measures holds every event's measures, from freeEvents: the events
	// of the Batch share it, so only sum gives it back, with the batch.
	measures []int64
	// chains holds every chain of valid. valid and chains come from free
	// lists (freeDecoded, freeAncestors): they are read only until the
	// batch is summed (the Batch copies the events), and free gives them
	// back.
	chains []Ancestor
}

func (a *records) fail(f Failure, offset int64) {
	a.failures, a.failedAt = append(a.failures, f), append(a.failedAt, offset)
}

// free gives back valid, cleared (it holds the batch's strings), and the
// chains, unzeroed (they hold none); nothing of a may be read afterwards.
func (a *records) free() {
	clear(a.valid)
	freeDecoded.put(a.valid)
	freeAncestors.put(a.chains)
	a.valid, a.chains = nil, nil
}

// attempt processes exactly the records of in, in the steps of
// docs/exactly-once.md (step 1, the look-up, is process's). again is true
// when Begin found a different intent recorded for the same first offset,
// or when a new batch met unknown entities and the hierarchy could be
// refreshed (then in carries the newer version).
func (p *Processor) attempt(ctx context.Context, epoch int64, in Intent, recs []Record, mayRefresh bool) (Intent, bool, error) {
	if err := p.replayable(in); err != nil {
		return in, false, err
	}
	// 2. decode, validate, expand; duplicates within the batch; claims.
	var a records
	p.decode(&a, in, recs)
	defer a.free()
	if mayRefresh && !in.Replay && hasClass(a.failures, ClassUnknownEntity) {
		if again, err := p.catchUp(ctx, &in); again || err != nil {
			return in, again, err
		}
	}
	// 3. begin: the intent and the claims, fenced by the lease.
	in, owned, again, err := p.begin(ctx, epoch, in, a.claims, mayRefresh)
	if again || err != nil {
		return in, again, err
	}
	if a.every {
		a.failures = p.ownedFailures(a.failures, a.failedAt, owned, &a.counts)
	}
	// 4. write: the rollups summed, the failures out, the blocks, the ack.
	b, arrays := p.sum(in, &a, owned)
	retries, dead, err := p.sendFailures(ctx, in, a.failures)
	if err != nil {
		return in, false, err
	}
	a.counts.Retried = uint32(len(retries))
	a.counts.DeadLettered = uint32(len(dead))
	b.Counts = a.counts
	if resolved := p.resolved(a.replays, owned); len(dead)+len(resolved) > 0 {
		if err := p.Sink.WriteFailures(ctx, append(dead, resolved...)); err != nil {
			return in, false, fmt.Errorf("write failures: %w", err)
		}
	}
	start := time.Now()
	if err := p.write(ctx, b); err != nil {
		return in, false, err
	}
	// 5. done.
	if err := p.Ledger.Done(ctx, in.Source); err != nil {
		return in, false, fmt.Errorf("mark batch done: %w", err)
	}
	p.Metrics.observeBatch(b, dead, len(retries), time.Since(start))
	if p.Observer != nil {
		p.Observer(b.Counts, dead)
	}
	if in.Replay {
		p.log().Info("replayed batch", "topic", in.Topic, "partition", in.Partition, "first", in.First, "last", in.Last)
	}
	// Nothing reads b's rollups and events any more: the Sink copied them
	// (arrays is nil for a Sink that may keep them), and b goes no
	// further. On the error paths above the arrays are left to the garbage
	// collector.
	arrays.release()
	return in, false, nil
}

// replayable refuses a replay this process cannot write as the batch's
// first attempt did: under another fingerprint, or with an older hierarchy.
func (p *Processor) replayable(in Intent) error {
	if in.Replay && in.Fingerprint != "" && in.Fingerprint != p.Fingerprint() {
		return fmt.Errorf("%w: begun with %q, this process has %q; finish it with the configuration it was begun with",
			ErrReplayMismatch, in.Fingerprint, p.Fingerprint())
	}
	if in.Replay && p.Resolver.Version() < in.HierarchyVersion {
		return fmt.Errorf("%w: have %d, batch needs %d", ErrHierarchyBehind, p.Resolver.Version(), in.HierarchyVersion)
	}
	return nil
}

// decode is step 2: it decodes and validates each record (its headers read
// once, into an Origin), resolves each event's chains as of in's hierarchy
// version, and fills a with the valid events, the failures and the claims.
// Under a Ledger that does not claim every decoded record, a repeated id
// within the batch is a duplicate here.
func (p *Processor) decode(a *records, in Intent, recs []Record) {
	a.every = claimsEveryDecoded(p.Ledger)
	a.valid = freeDecoded.get(len(recs))[:0]
	a.claims = make([]Claim, 0, len(recs))
	a.counts = Counts{Records: uint32(len(recs))}
	// Room for chains of 8 at once, not by doubling.
	a.chains = freeAncestors.get(len(recs) * 8)[:0]
	var (
		seen     map[string]bool // the ids of this batch, unless every decoded record is claimed
		types    = map[string]bool{}
		maxTypes = p.maxTypes()
		nm       = len(p.Decoder.measures)
		// Every event's measures, in one array (Decode sets each event's).
		measures = freeEvents.get(nm * len(recs))
	)
	a.measures = measures
	if !a.every {
		seen = make(map[string]bool, len(recs))
	}
	// The records are decoded a chunk at a time, and the chunk's chains
	// resolved after: the resolver warms the chunk's entities first
	// (Warmer), so their look-ups do not each wait on memory in turn.
	warmer, _ := p.Resolver.(Warmer)
	chunk := make([]pendingChain, 0, min(len(recs), warmChunk))
	ids := make([]int64, 0, cap(chunk))
	resolve := func() {
		r, done := p.Resolver, func() {}
		if warmer != nil {
			r, done = warmer.Warm(ids)
		}
		for j := range chunk {
			c := &chunk[j]
			if !p.expand(r, a, &c.d, in.HierarchyVersion) {
				what := "is not in the hierarchy"
				if c.d.chain != nil {
					what = "has a broken ancestor chain"
				}
				a.fail(p.failure(*c.r, &c.o, &c.d.ev, ClassUnknownEntity,
					fmt.Sprintf("entity %d %s (version %d)", c.d.ev.EntityID, what, in.HierarchyVersion)), c.r.Offset)
				continue
			}
			if !a.every {
				if seen[c.d.ev.ID] {
					a.counts.Duplicates++ // the earlier record of this batch owns the id
					continue
				}
				seen[c.d.ev.ID] = true
				a.claims = append(a.claims, Claim{EventID: c.d.ev.ID, OccurredAt: c.d.ev.OccurredAt, Offset: c.r.Offset})
			}
			a.valid = append(a.valid, c.d)
			if c.o.Known && c.o.Replay {
				a.replays = append(a.replays, replayed{offset: c.r.Offset, key: c.r.Key, raw: c.r.Value, origin: c.o})
			}
		}
		done()
		clear(chunk) // it holds the chunk's strings
		chunk, ids = chunk[:0], ids[:0]
	}
	for i := range recs {
		if len(chunk) == cap(chunk) {
			resolve()
		}
		r := &recs[i] // not a copy: a Record is 140 bytes
		o := Origin{RetryOf: -1}
		if !sourceOnly(r.Headers) {
			o = DecodeOrigin(r.Headers)
		} // else failure reads the source, the one thing o lacks, if it fails
		if a.every {
			if c, ok := releaseIn(r, &o); ok {
				a.claims = append(a.claims, c) // frees a dead-lettered owner's id; not an event
				continue
			}
		}
		var d decoded
		d.offset = r.Offset
		d.ev.Measures = measures[i*nm : (i+1)*nm : (i+1)*nm]
		if o.RawBytes > 0 {
			// The router kept only a prefix of a record too large to be
			// an event: it is dead-lettered as it came.
			f := p.failure(*r, &o, nil, ClassOversize, fmt.Sprintf("record of %d bytes is larger than an event may be", o.RawBytes))
			f.RawBytes, f.RawSHA256 = o.RawBytes, o.RawSHA256
			a.fail(f, r.Offset)
			continue
		}
		if err := p.Decoder.Decode(r.Value, &d.ev); err != nil {
			pe := asPoison(err)
			a.fail(p.failure(*r, &o, nil, pe.Class, pe.Msg), r.Offset)
			continue
		}
		if !types[d.ev.Type] {
			if maxTypes >= 0 && len(types) >= maxTypes {
				a.fail(p.failure(*r, &o, &d.ev, ClassTooManyTypes,
					fmt.Sprintf("the batch already has %d distinct event types (ingest.max_types_per_batch)", maxTypes)), r.Offset)
				continue
			}
			types[d.ev.Type] = true
		}
		if a.every {
			// The owner of a repeated id is decided by the ledger alone,
			// whether or not its entity is known yet.
			a.claims = append(a.claims, Claim{EventID: d.ev.ID, OccurredAt: d.ev.OccurredAt, Offset: r.Offset,
				Time: r.Time, RetryOf: o.RetryOf})
		}
		chunk = append(chunk, pendingChain{d: d, r: r, o: o})
		ids = append(ids, d.ev.EntityID)
	}
	resolve()
	orderFailures(a)
}

// warmChunk is how many records decode reads before resolving their chains.
// Its entities' look-ups, a few cache lines each, stay in cache until
// they are resolved (BenchmarkTreeAncestorsHeld in hierarchy).
const warmChunk = 256

// pendingChain is a record decode has read and not resolved yet.
type pendingChain struct {
	d decoded
	r *Record
	o Origin
}

// orderFailures puts a's failures back in the order of their records:
// decode records a chunk's unknown entities after the chunk's malformed
// records.
func orderFailures(a *records) {
	if slices.IsSorted(a.failedAt) {
		return
	}
	perm := make([]int, len(a.failedAt))
	for i := range perm {
		perm[i] = i
	}
	slices.SortStableFunc(perm, func(i, j int) int { return cmp.Compare(a.failedAt[i], a.failedAt[j]) })
	failures, at := make([]Failure, len(perm)), make([]int64, len(perm))
	for i, p := range perm {
		failures[i], at[i] = a.failures[p], a.failedAt[p]
	}
	a.failures, a.failedAt = failures, at
}

// expand resolves through r d's as-was chain at version v into a's chain
// buffer and, when it differs, its as-is chain. false when the entity is
// unknown (then d.chain is nil) or its current chain is broken.
func (p *Processor) expand(r Resolver, a *records, d *decoded, v int64) bool {
	start := len(a.chains)
	chain, ok, latest := expand(r, &d.ev, v, p.Suspended, a.chains[start:])
	if !ok {
		return false
	}
	a.chains = append(a.chains, chain...)
	d.chain = a.chains[start:len(a.chains):len(a.chains)]
	if latest {
		return true // the as-is chain is the same
	}
	start = len(a.chains)
	current, ok := expandCurrent(r, &d.ev, v, p.Suspended, a.chains[start:])
	if !ok {
		return false
	}
	if !SameLinks(current, d.chain) {
		a.chains = append(a.chains, current...)
		d.current = a.chains[start:len(a.chains):len(a.chains)]
	}
	return true
}

// begin is step 3: Ledger.Begin records the intent and the claims, fenced
// by the lease, and returns the intent recorded and the offsets that own
// their ids. again (with the intent to attempt instead) when another
// attempt recorded the batch first, or when the restater fenced off the
// batch's hierarchy version and the hierarchy caught up.
func (p *Processor) begin(ctx context.Context, epoch int64, in Intent, claims []Claim, mayRefresh bool) (Intent, *Owned, bool, error) {
	got, owned, err := p.Ledger.Begin(ctx, epoch, in, claims)
	if errors.Is(err, ErrHierarchyBehind) && !in.Replay && mayRefresh {
		// The restater has fenced off older versions: catch up and resolve
		// the batch again.
		if again, cerr := p.catchUp(ctx, &in); again || cerr != nil {
			return in, nil, again, cerr
		}
	}
	if err != nil {
		return in, nil, false, err
	}
	if got.Last != in.Last || got.HierarchyVersion != in.HierarchyVersion || !got.CreatedAt.Equal(in.CreatedAt) {
		return got, nil, true, nil
	}
	return got, owned, false, nil
}

// sum fans the events that own their ids out to the hourly rollup, sums
// the daily rollup from it (coarsen, not a second fan-out of every link)
// and the coarser grains' from that, and the as-is daily rollup from the
// chains that differ. Through a Sink that keeps nothing of a batch
// (recyclesRollups) the sorted rollups' arrays come from the free lists,
// and arrays records them for attempt to give back once the batch is
// written; otherwise arrays is nil.
func (p *Processor) sum(in Intent, a *records, owned *Owned) (_ *Batch, arrays *rollupArrays) {
	nm := len(p.Decoder.measures)
	if recyclesRollups(p.Sink) {
		arrays = &rollupArrays{events: [][]int64{a.measures}}
	}
	b := &Batch{Intent: in, Events: arrays.acceptedEvents(len(a.valid))}
	links := 0
	for i := range a.valid {
		links += len(a.valid[i].chain)
	}
	hourly := newFanoutBuilder(nm, false, links)
	hourly.arrays = arrays
	hourly.reserve(len(a.valid))
	var moved *Rollup // as-is minus as-was, for events whose chains differ
	for i := range a.valid {
		d := &a.valid[i]
		if !owned.Has(d.offset) {
			a.counts.Duplicates++ // claimed by an earlier record elsewhere
			continue
		}
		b.Events = append(b.Events, Accepted{Event: d.ev, Offset: d.offset})
		hourly.add(&d.ev, d.chain)
		if d.current != nil {
			if moved == nil {
				moved = NewRollup(nm)
			}
			addDaily(moved, &d.ev, d.chain, -1)
			addDaily(moved, &d.ev, d.current, 1)
		}
	}
	b.Hourly, b.Daily, b.Coarser = hourly.rollupsWith(schema.CoarserGrains(p.Grains))
	b.AsIs = b.Daily
	if moved != nil {
		b.AsIs = Merge(b.Daily, moved)
	}
	a.counts.Accepted = uint32(len(b.Events))
	return b, arrays
}

// sendFailures routes a batch's failures and publishes them, before the
// acknowledgement, so a crash can repeat them (at-least-once, keyed by
// source offset) but never lose them. Transient failures go to the retry
// topic while attempts and age allow, so the partition goes on; the rest
// are dead letters, whose claims the Ledger then releases.
func (p *Processor) sendFailures(ctx context.Context, in Intent, fs []Failure) (retries, dead []Failure, _ error) {
	retries, dead = p.route(fs)
	if len(retries) > 0 {
		refused, err := published(p.Retry.Publisher.PublishRetries(ctx, retries))
		if err != nil {
			return nil, nil, fmt.Errorf("retry publish: %w", err)
		}
		retries, dead = p.retriesRefused(retries, dead, refused)
	}
	for i := range dead {
		dead[i].fit()
	}
	if len(dead) == 0 {
		return retries, dead, nil
	}
	refused, err := published(p.DLQ.Publish(ctx, dead))
	if err != nil {
		return nil, nil, fmt.Errorf("dead-letter publish: %w", err)
	}
	for i, why := range refused {
		f := &dead[i]
		f.Message = fmt.Sprintf("%s: %s; the dead-letter topic refused it for good: %v", f.Class, f.Message, why)
		f.Class = ClassUnpublishable
	}
	if r, ok := p.Ledger.(Releaser); ok {
		if err := r.Release(ctx, in.Partition, dead); err != nil {
			return nil, nil, fmt.Errorf("release dead-lettered claims: %w", err)
		}
	}
	return retries, dead, nil
}

// write is the exactly-once step: every block of b is a function of
// (records, intent), so if this attempt or a zombie's already wrote it,
// ClickHouse drops the repeat (docs/exactly-once.md, step 4). An old
// replay, whose blocks ClickHouse may have forgotten, writes only the
// missing parts.
func (p *Processor) write(ctx context.Context, b *Batch) error {
	w, err := p.toWrite(ctx, b)
	if err != nil {
		return err
	}
	if w != nil {
		if err := p.Sink.Write(ctx, w); err != nil {
			return fmt.Errorf("write batch: %w", err)
		}
	}
	return nil
}

// Releaser is a Ledger that frees the claims of dead-lettered records
// (PartitionedClaims), so the id counts when it arrives again.
type Releaser interface {
	Release(ctx context.Context, partition int32, dead []Failure) error
}

// claimsEveryDecoded reports whether l wants a claim for every record that
// decodes, its entity known or not (PartitionedClaims: its state is a
// function of the log alone, so whether an entity was known when a batch ran
// must not decide who owns an id).
func claimsEveryDecoded(l Ledger) bool {
	e, ok := l.(interface{ ClaimsEveryDecoded() bool })
	return ok && e.ClaimsEveryDecoded()
}

// ownedFailures keeps, of a batch's failures under a ledger that claims
// every decoded record, the poison ones and those whose record owns its id
// (marked as holding the claim, which their retry takes over); a failed
// record that does not own its id is a duplicate.
func (p *Processor) ownedFailures(fs []Failure, at []int64, owned *Owned, counts *Counts) []Failure {
	kept := fs[:0]
	for i, f := range fs {
		if f.Class != ClassUnknownEntity {
			kept = append(kept, f)
			continue
		}
		if !owned.Has(at[i]) {
			counts.Duplicates++
			continue
		}
		f.HoldsClaim, f.Claim = true, at[i]
		kept = append(kept, f)
	}
	return kept
}

// toWrite is what of b must be written: all of it, or for a replay older
// than ReplayVerifyAfter the parts the Sink does not hold yet (nil when it
// holds the whole batch, acknowledgement included).
func (p *Processor) toWrite(ctx context.Context, b *Batch) (*Batch, error) {
	after := p.ReplayVerifyAfter
	if after == 0 {
		after = DefaultReplayVerifyAfter
	}
	ls, ok := p.Sink.(LandedSink)
	if !b.Intent.Replay || after < 0 || !ok || p.now().Sub(b.Intent.CreatedAt) < after {
		return b, nil
	}
	l, err := ls.Landed(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("verify old replay: %w", err)
	}
	p.log().Info("replaying a batch older than the verification age: writing only what ClickHouse lacks",
		"topic", b.Intent.Topic, "partition", b.Intent.Partition, "first", b.Intent.First,
		"begun", b.Intent.CreatedAt, "acked", l.Acked, "written_months_by_shard", l.Months)
	if l.Acked {
		return nil, nil
	}
	return b.without(l), nil
}

// published splits a publish's result into the failures refused for good
// and an error that calls for another attempt.
func published(err error) (map[int]error, error) {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Refused, nil
	}
	return nil, err
}

// retriesRefused moves the retries the retry topic refused for good to the
// dead letters, final.
func (p *Processor) retriesRefused(retries, dead []Failure, refused map[int]error) (kept, _ []Failure) {
	if len(refused) == 0 {
		return retries, dead
	}
	for i, f := range retries {
		if why, ok := refused[i]; ok {
			f.Final, f.RetryAt = true, time.Time{}
			f.Message = fmt.Sprintf("%s; the retry topic refused it for good: %v", f.Message, why)
			dead = append(dead, f)
			continue
		}
		kept = append(kept, f)
	}
	return kept, dead
}

// route splits failures into those to retry (transient, by
// Failure.classify, while the retry policy allows) and dead letters.
func (p *Processor) route(fs []Failure) (retry, dead []Failure) {
	pol := p.Retry.withDefaults()
	for _, f := range fs {
		if f.classify() == Transient && p.Retry.Publisher != nil && f.Attempts < pol.MaxAttempts && f.At.Sub(f.First) < pol.MaxAge {
			f.RetryAt = f.At.Add(pol.delay(f.Attempts))
			retry = append(retry, f)
			continue
		}
		dead = append(dead, f)
	}
	return retry, dead
}

// resolved returns, for the records replayed from the dead letters that
// were accepted (they own their ids), the failure rows that mark their
// first source resolved.
func (p *Processor) resolved(replays []replayed, owned *Owned) []Failure {
	var out []Failure
	for _, r := range replays {
		if !owned.Has(r.offset) {
			continue
		}
		o := &r.origin
		at := p.now().UTC().Truncate(time.Second)
		out = append(out, Failure{
			Source: o.Source, Key: r.key, Raw: r.raw, Class: o.Class, Message: o.Message,
			Attempts: o.Attempts, First: o.First, At: at, Resolution: "replayed",
		})
	}
	return out
}

// catchUp brings the hierarchy up to date when the Resolver can, and moves a
// new batch to the newer version; again reports that it did.
func (p *Processor) catchUp(ctx context.Context, in *Intent) (again bool, err error) {
	r, ok := p.Resolver.(Refresher)
	if !ok {
		return false, nil
	}
	v, err := r.Refresh(ctx)
	if err != nil {
		return false, fmt.Errorf("refresh hierarchy: %w", err)
	}
	if v <= in.HierarchyVersion {
		return false, nil
	}
	in.HierarchyVersion = v
	return true, nil
}

func hasClass(fs []Failure, c Class) bool {
	for _, f := range fs {
		if f.Class == c {
			return true
		}
	}
	return false
}

// failure is the failure of r (whose headers say o) with class c.
func (p *Processor) failure(r Record, o *Origin, ev *Event, c Class, msg string) Failure {
	if !o.Known {
		full := originOf(r) // o may have been read only in part (sourceOnly)
		o = &full
	}
	f := Failure{
		Source:   Source{Topic: r.Topic, TopicID: r.TopicID, Partition: r.Partition, First: r.Offset, Last: r.Offset},
		Key:      r.Key,
		Raw:      r.Value,
		Class:    c,
		Message:  msg,
		Attempts: 1,
		At:       p.now().UTC().Truncate(time.Second),
	}
	// A retried or replayed record fails in the name of its first source.
	if o.Known {
		f.Source = o.Source
		f.Attempts = o.Attempts + 1
		f.First = o.First
	}
	f.Final = o.Backfill
	if f.First.IsZero() {
		f.First = f.At
	}
	if ev != nil {
		f.EventID, f.EntityID = ev.ID, ev.EntityID
	}
	return f
}

func (p *Processor) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Processor) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}
