package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/wait"
)

// Record is one source record: what the processor needs of a Kafka record
// (or of a line of a backfill file).
type Record struct {
	Topic     string
	Log       string // see Source.Log
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
}

// Process handles a prefix of recs (same topic and partition, increasing
// offsets) and returns how many records it consumed; the caller commits the
// offset after them. It consumes nothing (0, nil) when recs stop short of a
// batch an earlier attempt recorded: the caller waits for more records.
// While canopy rebuild pauses new batches it waits and tries again.
func (p *Processor) Process(ctx context.Context, epoch int64, recs []Record) (int, error) {
	for {
		n, err := p.process(ctx, epoch, recs)
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

func (p *Processor) process(ctx context.Context, epoch int64, recs []Record) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	first := recs[0]
	in, found, err := p.Ledger.Intent(ctx, Source{Topic: first.Topic, Log: first.Log, Partition: first.Partition, First: first.Offset, Last: recs[len(recs)-1].Offset})
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
		due := p.batchLen(recs)
		if due == 0 {
			return 0, nil
		}
		recs = recs[:due]
		in = Intent{
			Source:           Source{Topic: first.Topic, Log: first.Log, Partition: first.Partition, First: first.Offset, Last: recs[len(recs)-1].Offset},
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
// MaxBackoff after it was published), within MaxBatchRecords and
// MaxBatchBytes (at least one record).
func (p *Processor) batchLen(recs []Record) int {
	now := p.now()
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
		if i > 0 && (p.MaxBatchRecords > 0 && i >= p.MaxBatchRecords || p.MaxBatchBytes > 0 && size > p.MaxBatchBytes) {
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
	return b.String()
}

// ancestorBufs holds the chain buffers of finished attempts, so a batch
// neither allocates nor zeroes room for its chains (several MB a batch).
var ancestorBufs = sync.Pool{New: func() any { return new([]Ancestor) }}

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

// attempt processes exactly the records of in. again is true when Begin
// found a different intent recorded for the same first offset, or when a
// new batch met unknown entities and the hierarchy could be refreshed (then
// in carries the newer version).
func (p *Processor) attempt(ctx context.Context, epoch int64, in Intent, recs []Record, mayRefresh bool) (Intent, bool, error) {
	if in.Replay && in.Fingerprint != "" && in.Fingerprint != p.Fingerprint() {
		return in, false, fmt.Errorf("%w: begun with %q, this process has %q; finish it with the configuration it was begun with",
			ErrReplayMismatch, in.Fingerprint, p.Fingerprint())
	}
	if in.Replay && p.Resolver.Version() < in.HierarchyVersion {
		return in, false, fmt.Errorf("%w: have %d, batch needs %d", ErrHierarchyBehind, p.Resolver.Version(), in.HierarchyVersion)
	}
	every := claimsEveryDecoded(p.Ledger)
	var (
		failures []Failure
		failedAt []int64 // offset of each failure's record
		valid    = make([]decoded, 0, len(recs))
		claims   = make([]Claim, 0, len(recs))
		seen     map[string]bool // the ids of this batch, unless every decoded record is claimed
		types    = map[string]bool{}
		maxTypes = p.maxTypes()
		counts   = Counts{Records: uint32(len(recs))}
		bufp     = ancestorBufs.Get().(*[]Ancestor)
		chainBuf = (*bufp)[:0]
		nm       = len(p.Decoder.measures)
		measures = make([]int64, nm*len(recs)) // every event's measures, in one allocation
	)
	// The chains are read only until the batch is summed: the buffer goes
	// back to the pool when this attempt returns, unzeroed.
	defer func() {
		*bufp = chainBuf[:0]
		ancestorBufs.Put(bufp)
	}()
	if want := len(recs) * 8; cap(chainBuf) < want {
		// The pool loses its buffers at every garbage collection, and a
		// batch collects: room for chains of 8 at once, not by doubling.
		chainBuf = make([]Ancestor, 0, want)
	}
	if !every {
		seen = make(map[string]bool, len(recs))
	}
	for i, r := range recs {
		if every {
			if c, ok := releaseOf(r); ok {
				claims = append(claims, c) // frees a dead-lettered owner's id; not an event
				continue
			}
		}
		var d decoded
		d.offset = r.Offset
		d.ev.Measures = measures[i*nm : (i+1)*nm : (i+1)*nm]
		if len(r.Headers) > 0 { // truncatedOf parses (and fails on) a missing header
			if size, sum, cut := truncatedOf(r); cut {
				// The router kept only a prefix of a record too large to be
				// an event: it is dead-lettered as it came.
				f := p.failure(r, nil, ClassOversize, fmt.Sprintf("record of %d bytes is larger than an event may be", size))
				f.RawBytes, f.RawSHA256 = size, sum
				failures, failedAt = append(failures, f), append(failedAt, r.Offset)
				continue
			}
		}
		if err := p.Decoder.Decode(r.Value, &d.ev); err != nil {
			pe, _ := IsPoison(err)
			failures, failedAt = append(failures, p.failure(r, nil, pe.Class, pe.Msg)), append(failedAt, r.Offset)
			continue
		}
		if !types[d.ev.Type] {
			if maxTypes >= 0 && len(types) >= maxTypes {
				failures = append(failures, p.failure(r, &d.ev, ClassTooManyTypes,
					fmt.Sprintf("the batch already has %d distinct event types (ingest.max_types_per_batch)", maxTypes)))
				failedAt = append(failedAt, r.Offset)
				continue
			}
			types[d.ev.Type] = true
		}
		if every {
			// The owner of a repeated id is decided by the ledger alone,
			// whether or not its entity is known yet.
			claims = append(claims, Claim{EventID: d.ev.ID, OccurredAt: d.ev.OccurredAt, Offset: r.Offset,
				Time: r.Time, RetryOf: originOf(r).retryOf})
		}
		start := len(chainBuf)
		chain, ok := expand(p.Resolver, &d.ev, in.HierarchyVersion, p.Suspended, chainBuf[start:])
		if !ok {
			failures = append(failures, p.failure(r, &d.ev, ClassUnknownEntity,
				fmt.Sprintf("entity %d is not in the hierarchy (version %d)", d.ev.EntityID, in.HierarchyVersion)))
			failedAt = append(failedAt, r.Offset)
			continue
		}
		chainBuf = append(chainBuf, chain...)
		d.chain = chainBuf[start:len(chainBuf):len(chainBuf)]
		start = len(chainBuf)
		current, ok := expandCurrent(p.Resolver, &d.ev, in.HierarchyVersion, p.Suspended, chainBuf[start:])
		if !ok {
			failures = append(failures, p.failure(r, &d.ev, ClassUnknownEntity,
				fmt.Sprintf("entity %d has a broken ancestor chain (version %d)", d.ev.EntityID, in.HierarchyVersion)))
			failedAt = append(failedAt, r.Offset)
			continue
		}
		if !SameLinks(current, d.chain) {
			chainBuf = append(chainBuf, current...)
			d.current = chainBuf[start:len(chainBuf):len(chainBuf)]
		}
		if every {
			valid = append(valid, d)
			continue
		}
		if seen[d.ev.ID] {
			counts.Duplicates++ // the earlier record of this batch owns the id
			continue
		}
		seen[d.ev.ID] = true
		valid = append(valid, d)
		claims = append(claims, Claim{EventID: d.ev.ID, OccurredAt: d.ev.OccurredAt, Offset: r.Offset})
	}

	if mayRefresh && !in.Replay && hasClass(failures, ClassUnknownEntity) {
		if again, err := p.catchUp(ctx, &in); again || err != nil {
			return in, again, err
		}
	}

	got, owned, err := p.Ledger.Begin(ctx, epoch, in, claims)
	if errors.Is(err, ErrHierarchyBehind) && !in.Replay && mayRefresh {
		// The restater has fenced off older versions: catch up and resolve
		// the batch again.
		if again, cerr := p.catchUp(ctx, &in); again || cerr != nil {
			return in, again, cerr
		}
	}
	if err != nil {
		return in, false, err
	}
	if got.Last != in.Last || got.HierarchyVersion != in.HierarchyVersion || !got.CreatedAt.Equal(in.CreatedAt) {
		return got, true, nil
	}
	in = got
	if every {
		failures = p.ownedFailures(failures, failedAt, owned, &counts)
	}

	b := &Batch{Intent: in, Events: make([]Accepted, 0, len(valid))}
	links := 0
	for i := range valid {
		links += len(valid[i].chain)
	}
	// The daily rollup is summed from the hourly one (dailyOf), not from a
	// second fan-out of every link.
	hourly := newFanoutBuilder(nm, false, links)
	hourly.reserve(len(valid))
	var moved *Rollup // as-is minus as-was, for events whose chains differ
	for i := range valid {
		d := &valid[i]
		if !owned[d.offset] {
			counts.Duplicates++ // claimed by an earlier record elsewhere
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
	b.Hourly, b.Daily = hourly.rollups()
	b.AsIs = b.Daily
	if moved != nil {
		b.AsIs = Merge(b.Daily, moved)
	}
	counts.Accepted = uint32(len(b.Events))

	// Dead letters go out before the acknowledgement, so a crash can repeat
	// them (at-least-once, keyed by source offset) but never lose them.
	// Transient failures go to the retry topic while attempts and age
	// allow, so the partition goes on; the rest are dead letters.
	retries, dead := p.route(failures)
	if len(retries) > 0 {
		refused, err := published(p.Retry.Publisher.PublishRetries(ctx, retries))
		if err != nil {
			return in, false, fmt.Errorf("retry publish: %w", err)
		}
		retries, dead = p.retriesRefused(retries, dead, refused)
	}
	for i := range dead {
		dead[i].fit()
	}
	if len(dead) > 0 {
		refused, err := published(p.DLQ.Publish(ctx, dead))
		if err != nil {
			return in, false, fmt.Errorf("dead-letter publish: %w", err)
		}
		for i, why := range refused {
			f := &dead[i]
			f.Message = fmt.Sprintf("%s: %s; the dead-letter topic refused it for good: %v", f.Class, f.Message, why)
			f.Class = ClassUnpublishable
		}
		if r, ok := p.Ledger.(Releaser); ok {
			if err := r.Release(ctx, in.Partition, dead); err != nil {
				return in, false, fmt.Errorf("release dead-lettered claims: %w", err)
			}
		}
	}
	counts.Retried = uint32(len(retries))
	counts.DeadLettered = uint32(len(dead))
	b.Counts = counts
	if resolved := p.resolved(b, recs); len(dead)+len(resolved) > 0 {
		if err := p.Sink.WriteFailures(ctx, append(dead, resolved...)); err != nil {
			return in, false, fmt.Errorf("write failures: %w", err)
		}
	}
	// The exactly-once step: every block of b is a function of (records,
	// intent), so if this attempt or a zombie's already wrote it, ClickHouse
	// drops the repeat (docs/exactly-once.md, step 4). An old replay, whose
	// blocks ClickHouse may have forgotten, writes only the missing parts.
	start := time.Now()
	write, err := p.toWrite(ctx, b)
	if err != nil {
		return in, false, err
	}
	if write != nil {
		if err := p.Sink.Write(ctx, write); err != nil {
			return in, false, fmt.Errorf("write batch: %w", err)
		}
	}
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
	return in, false, nil
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
func (p *Processor) ownedFailures(fs []Failure, at []int64, owned map[int64]bool, counts *Counts) []Failure {
	kept := fs[:0]
	for i, f := range fs {
		if f.Class != ClassUnknownEntity {
			kept = append(kept, f)
			continue
		}
		if !owned[at[i]] {
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
		"begun", b.Intent.CreatedAt, "acked", l.Acked, "written_months", l.Months)
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

// route splits failures into those to retry and dead letters.
func (p *Processor) route(fs []Failure) (retry, dead []Failure) {
	pol := p.Retry.withDefaults()
	for _, f := range fs {
		transient := f.Class == ClassUnknownEntity && !f.Final
		if transient && p.Retry.Publisher != nil && f.Attempts < pol.MaxAttempts && f.At.Sub(f.First) < pol.MaxAge {
			f.RetryAt = f.At.Add(pol.delay(f.Attempts))
			retry = append(retry, f)
			continue
		}
		dead = append(dead, f)
	}
	return retry, dead
}

// resolved returns, for the accepted records of b that were replayed from
// the dead letters, the failure rows that mark their first source resolved.
func (p *Processor) resolved(b *Batch, recs []Record) []Failure {
	var out []Failure
	accepted := make(map[int64]bool, len(b.Events))
	for _, e := range b.Events {
		accepted[e.Offset] = true
	}
	for _, r := range recs {
		o := originOf(r)
		if !o.known || !o.replay || !accepted[r.Offset] {
			continue
		}
		at := p.now().UTC().Truncate(time.Second)
		out = append(out, Failure{
			Source: o.source, Key: r.Key, Raw: r.Value, Class: o.class, Message: o.message,
			Attempts: o.attempts, First: o.first, At: at, Resolution: "replayed",
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

func (p *Processor) failure(r Record, ev *Event, c Class, msg string) Failure {
	f := Failure{
		Source:   Source{Topic: r.Topic, Log: r.Log, Partition: r.Partition, First: r.Offset, Last: r.Offset},
		Key:      r.Key,
		Raw:      r.Value,
		Class:    c,
		Message:  msg,
		Attempts: 1,
		At:       p.now().UTC().Truncate(time.Second),
	}
	// A retried or replayed record fails in the name of its first source.
	o := originOf(r)
	if o.known {
		f.Source = o.source
		f.Attempts = o.attempts + 1
		f.First = o.first
	}
	f.Final = o.backfill
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
