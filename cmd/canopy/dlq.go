package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/schema"
)

// dlqFilter selects dead letters.
type dlqFilter struct {
	class      string
	since      string
	entity     int64
	unresolved bool
}

func (f *dlqFilter) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.class, "class", "", "only this error class (e.g. unknown_entity, invalid_json)")
	cmd.Flags().StringVar(&f.since, "since", "", "only dead letters that failed since this time (RFC 3339) or this long ago (e.g. 24h)")
	cmd.Flags().Int64Var(&f.entity, "entity", 0, "only events of this entity id")
	cmd.Flags().BoolVar(&f.unresolved, "unresolved", false, "leave out dead letters already replayed successfully")
}

func (f *dlqFilter) sinceTime(now time.Time) (time.Time, error) {
	if f.since == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(f.since); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, f.since)
	if err != nil {
		return time.Time{}, usageError{fmt.Errorf("--since %q: want RFC 3339 or a duration like 24h", f.since)}
	}
	return t, nil
}

// deadLetter is one record of the dead-letter topic.
type deadLetter struct {
	rec      *kgo.Record
	class    string
	message  string
	attempts string
	source   string // topic/partition/offset
	// sourceTopic, sourcePartition and sourceOffset are source's parts;
	// sourceTopic is "" when the headers do not name a readable source.
	sourceTopic     string
	sourcePartition int32
	sourceOffset    int64
	failedAt        time.Time
	entity          int64 // 0 when unreadable
	resolution      string
}

// Bounds of one step of dlq list and dlq replay: a step reads at most
// dlqChunkRecords dead letters, and a replay sends at most dlqChunkRecords
// records or dlqChunkBytes bytes per ProduceSync, so memory stays bounded
// whatever the size of the dead-letter topic.
const (
	dlqChunkRecords = 1000
	dlqChunkBytes   = 8 << 20
	dlqProgressEach = 5 * time.Second
)

func newDLQ(cfg *config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect dead letters and replay them after a fix",
	}
	var lf dlqFilter
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters with their error class, source and resolution",
		Long: `list prints the selected dead letters, read from the start of the dead-letter
topic up to its end when the command starts, as it reads them. Columns are
aligned within each block of 1000 lines.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			header := true
			show := func(dls []deadLetter) error {
				tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
				if header {
					fmt.Fprintln(tw, "PARTITION\tOFFSET\tFAILED_AT\tCLASS\tATTEMPTS\tSOURCE\tENTITY\tRESOLUTION\tMESSAGE")
					header = false
				}
				for _, d := range dls {
					fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.rec.Partition, d.rec.Offset,
						d.failedAt.Format(time.RFC3339), d.class, d.attempts, d.source, d.entity, d.resolution, d.message)
				}
				return tw.Flush()
			}
			if _, err := scanDeadLetters(cmd.Context(), cfg, &lf, true, show); err != nil {
				return err
			}
			if header { // nothing selected: the header alone
				return show(nil)
			}
			return nil
		},
	}
	lf.register(list)
	var rf dlqFilter
	replay := &cobra.Command{
		Use:   "replay",
		Short: "Send the selected dead letters through ingestion again (after fixing their cause)",
		Long: `replay produces the selected dead letters' original bytes to the retry topic
(kafka.retry_topic), due at once: only Canopy's own topics may carry its
replay and source headers. An event that now succeeds counts once (its
event_id is claimed like any other) and its failure is marked resolved in
ingest_failures; one that fails again is dead-lettered again. Replaying twice
changes nothing the second time.

It reads the dead-letter topic up to its end when the command starts and
sends as it reads, at most 1000 records or 8 MiB at a time, logging progress
every few seconds; interrupted, it may be run again (a repeat counts nothing).`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReplay(cmd.Context(), cfg, &rf)
		},
	}
	rf.register(replay)
	cmd.AddCommand(list, replay)
	return cmd
}

// runReplay produces the selected dead letters to the retry topic, a chunk
// at a time.
func runReplay(ctx context.Context, cfg *config, f *dlqFilter) error {
	log := cfg.logger()
	topic := cfg.get("kafka.retry_topic")
	ensureRetryTopic(ctx, log, cfg)
	cl, err := kgo.NewClient(cfg.kafkaOpts(kgo.ProducerBatchMaxBytes(16 << 20))...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	replayed := 0
	recs := make([]*kgo.Record, 0, dlqChunkRecords)
	send := func() error {
		if len(recs) == 0 {
			return nil
		}
		if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			return fmt.Errorf("replay to %s after %d records: %w", topic, replayed, err)
		}
		replayed += len(recs)
		clear(recs) // let the sent records go
		recs = recs[:0]
		return nil
	}
	_, err = scanDeadLetters(ctx, cfg, f, f.unresolved, func(dls []deadLetter) error {
		size := 0
		for _, d := range dls {
			hs := ingest.ReplayHeaders(d.rec) // due at once, naming the dead letter
			r := &kgo.Record{Topic: topic, Key: d.rec.Key, Value: d.rec.Value, Headers: hs}
			n := len(r.Key) + len(r.Value)
			for _, h := range hs {
				n += len(h.Key) + len(h.Value)
			}
			if len(recs) > 0 && (len(recs) >= dlqChunkRecords || size+n > dlqChunkBytes) {
				if err := send(); err != nil {
					return err
				}
				size = 0
			}
			recs = append(recs, r)
			size += n
		}
		return send()
	})
	if err != nil {
		return err
	}
	fmt.Printf("replayed %d dead letters to %s\n", replayed, topic)
	return nil
}

// scanDeadLetters reads the dead-letter topic from its start to the end it
// has when the scan begins and hands the records the filter selects to fn,
// at most dlqChunkRecords at a time, in the order read. With withResolution
// each dead letter carries its resolution from ingest_failures, looked up a
// chunk at a time. It logs progress every few seconds and returns how many
// records it read.
func scanDeadLetters(ctx context.Context, cfg *config, f *dlqFilter, withResolution bool, fn func([]deadLetter) error) (int64, error) {
	log := cfg.logger()
	since, err := f.sinceTime(time.Now())
	if err != nil {
		return 0, err
	}
	topic := cfg.get("kafka.dlq_topic")
	meta, err := kgo.NewClient(cfg.kafkaOpts()...)
	if err != nil {
		return 0, fmt.Errorf("kafka: %w", err)
	}
	defer meta.Close()
	adm := kadm.NewClient(meta)
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("dead-letter topic %s: %w", topic, err)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("dead-letter topic %s: %w", topic, err)
	}
	remaining := map[int32]int64{} // partition → end offset at the start
	from := map[int32]kgo.Offset{}
	var total int64
	ends.Each(func(o kadm.ListedOffset) {
		s, _ := starts.Lookup(topic, o.Partition)
		if o.Offset > s.Offset {
			remaining[o.Partition] = o.Offset
			from[o.Partition] = kgo.NewOffset().At(s.Offset)
			total += o.Offset - s.Offset
		}
	})
	if len(remaining) == 0 {
		return 0, nil
	}
	cl, err := kgo.NewClient(cfg.kafkaOpts(
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from}),
		kgo.FetchMaxBytes(1<<20), kgo.FetchMaxPartitionBytes(256<<10))...)
	if err != nil {
		return 0, fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	var res *resolver
	if withResolution {
		if res, err = openResolver(ctx, cfg); err != nil {
			return 0, err
		}
		defer res.close()
	}
	var (
		read, selected int64
		idle           = time.Now()
		reported       = time.Now()
		chunk          = make([]deadLetter, 0, dlqChunkRecords)
	)
	for len(remaining) > 0 {
		if time.Since(idle) > 10*time.Second {
			break // what is left below the end offsets holds no records
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollRecords(pctx, dlqChunkRecords)
		cancel()
		if err := ctx.Err(); err != nil {
			return read, err
		}
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) {
				return read, fmt.Errorf("read %s/%d: %w", e.Topic, e.Partition, e.Err)
			}
		}
		if fs.NumRecords() > 0 {
			idle = time.Now()
		}
		chunk = chunk[:0]
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := remaining[r.Partition]
			if !ok || r.Offset >= end {
				return // written after the scan began
			}
			read++
			if r.Offset >= end-1 {
				delete(remaining, r.Partition)
				cl.PauseFetchPartitions(map[string][]int32{topic: {r.Partition}})
			}
			d := parseDeadLetter(r)
			switch {
			case f.class != "" && d.class != f.class,
				!since.IsZero() && d.failedAt.Before(since),
				f.entity != 0 && d.entity != f.entity:
				return
			}
			chunk = append(chunk, d)
		})
		if res != nil && len(chunk) > 0 {
			if err := res.fill(ctx, chunk); err != nil {
				return read, err
			}
		}
		if f.unresolved {
			kept := chunk[:0]
			for _, d := range chunk {
				if d.resolution == "" {
					kept = append(kept, d)
				}
			}
			clear(chunk[len(kept):])
			chunk = kept
		}
		if len(chunk) > 0 {
			selected += int64(len(chunk))
			if err := fn(chunk); err != nil {
				return read, err
			}
		}
		clear(chunk) // let the records go before the next poll
		if time.Since(reported) >= dlqProgressEach {
			reported = time.Now()
			log.Info("reading dead letters", "topic", topic, "read", read, "total", total, "selected", selected)
		}
	}
	if time.Since(reported) < time.Since(idle) || read >= 100000 {
		log.Info("read dead letters", "topic", topic, "read", read, "total", total, "selected", selected)
	}
	return read, nil
}

// parseDeadLetter reads a dead letter's headers with ingest's decoder.
func parseDeadLetter(r *kgo.Record) deadLetter {
	d := deadLetter{rec: r}
	o := ingest.DecodeOrigin(r.Headers)
	d.class, d.message = string(o.Class), o.Message
	d.attempts = strconv.FormatUint(uint64(o.Attempts), 10)
	d.source = "-" // the headers name no readable source
	if o.Known && o.Source.Topic != "" {
		d.sourceTopic, d.sourcePartition, d.sourceOffset = o.Source.Topic, o.Source.Partition, o.Source.First
		d.source = fmt.Sprintf("%s/%d/%d", d.sourceTopic, d.sourcePartition, d.sourceOffset) // as ingest_failures spells it
	}
	d.failedAt = o.FailedAt
	var ev struct {
		EntityID json.Number `json:"entity_id"`
	}
	if json.Unmarshal(r.Value, &ev) == nil {
		d.entity, _ = strconv.ParseInt(string(ev.EntityID), 10, 64)
	}
	return d
}

// resolver looks up the resolutions ingest_failures records for dead
// letters, a chunk at a time.
type resolver struct {
	ch    driver.Conn
	table string
}

func openResolver(ctx context.Context, cfg *config) (*resolver, error) {
	db := cfg.get("clickhouse.database")
	if err := schema.CheckIdentifier("clickhouse.database", db); err != nil {
		return nil, usageError{err} // it is written into the query
	}
	ch, err := openClickHouse(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &resolver{ch: ch, table: db + "." + schema.TableFailures}, nil
}

func (r *resolver) close() { _ = r.ch.Close() }

// fill sets the resolution of each dead letter of dls that has one: one
// query per source topic and partition, by the failures' sort key, so it
// reads only the rows of these dead letters.
func (r *resolver) fill(ctx context.Context, dls []deadLetter) error {
	type tp struct {
		topic     string
		partition int32
	}
	offsets := map[tp][]int64{}
	for _, d := range dls {
		if d.sourceTopic == "" {
			continue
		}
		k := tp{d.sourceTopic, d.sourcePartition}
		offsets[k] = append(offsets[k], d.sourceOffset)
	}
	found := map[string]string{}
	for k, offs := range offsets {
		var in strings.Builder
		for i, o := range offs {
			if i > 0 {
				in.WriteByte(',')
			}
			in.WriteString(strconv.FormatInt(o, 10))
		}
		rows, err := r.ch.Query(ctx, fmt.Sprintf(`SELECT source_offset, resolution FROM %s FINAL
			WHERE source_topic = ? AND source_partition = ? AND source_offset IN (%s) AND resolution != ''`, r.table, in.String()),
			k.topic, k.partition)
		if err != nil {
			return fmt.Errorf("read %s: %w", schema.TableFailures, err)
		}
		for rows.Next() {
			var (
				o   int64
				res string
			)
			if err := rows.Scan(&o, &res); err != nil {
				rows.Close()
				return fmt.Errorf("read %s: %w", schema.TableFailures, err)
			}
			found[fmt.Sprintf("%s/%d/%d", k.topic, k.partition, o)] = res
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", schema.TableFailures, err)
		}
	}
	for i := range dls {
		dls[i].resolution = found[dls[i].source]
	}
	return nil
}
