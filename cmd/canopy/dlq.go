package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

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
	rec        *kgo.Record
	class      string
	message    string
	attempts   string
	source     string // topic/partition/offset
	failedAt   time.Time
	entity     int64 // 0 when unreadable
	resolution string
}

func newDLQ(cfg *config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect dead letters and replay them after a fix",
	}
	var lf dlqFilter
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters with their error class, source and resolution",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			dls, err := readDeadLetters(cmd.Context(), cfg, &lf)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PARTITION\tOFFSET\tFAILED_AT\tCLASS\tATTEMPTS\tSOURCE\tENTITY\tRESOLUTION\tMESSAGE")
			for _, d := range dls {
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.rec.Partition, d.rec.Offset,
					d.failedAt.Format(time.RFC3339), d.class, d.attempts, d.source, d.entity, d.resolution, d.message)
			}
			return tw.Flush()
		},
	}
	lf.register(list)
	var rf dlqFilter
	replay := &cobra.Command{
		Use:   "replay",
		Short: "Send the selected dead letters through ingestion again (after fixing their cause)",
		Long: `replay produces the selected dead letters' original bytes to the events topic
again. An event that now succeeds counts once (its event_id is claimed like any
other) and its failure is marked resolved in ingest_failures; one that fails
again is dead-lettered again. Replaying twice changes nothing the second time.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			dls, err := readDeadLetters(ctx, cfg, &rf)
			if err != nil {
				return err
			}
			cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.brokers()...))
			if err != nil {
				return fmt.Errorf("kafka: %w", err)
			}
			defer cl.Close()
			recs := make([]*kgo.Record, 0, len(dls))
			for _, d := range dls {
				hs := append([]kgo.RecordHeader(nil), d.rec.Headers...)
				hs = append(hs, kgo.RecordHeader{Key: ingest.HeaderReplay,
					Value: []byte(fmt.Sprintf("%s/%d/%d", d.rec.Topic, d.rec.Partition, d.rec.Offset))})
				recs = append(recs, &kgo.Record{Topic: cfg.get("kafka.events_topic"), Key: d.rec.Key, Value: d.rec.Value, Headers: hs})
			}
			if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
				return fmt.Errorf("replay to %s: %w", cfg.get("kafka.events_topic"), err)
			}
			fmt.Printf("replayed %d dead letters to %s\n", len(recs), cfg.get("kafka.events_topic"))
			return nil
		},
	}
	rf.register(replay)
	cmd.AddCommand(list, replay)
	return cmd
}

// readDeadLetters reads the dead-letter topic from its start to its current
// end and returns the records the filter selects.
func readDeadLetters(ctx context.Context, cfg *config, f *dlqFilter) ([]deadLetter, error) {
	since, err := f.sinceTime(time.Now())
	if err != nil {
		return nil, err
	}
	topic := cfg.get("kafka.dlq_topic")
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.brokers()...),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("dead-letter topic %s: %w", topic, err)
	}
	remaining := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			remaining[o.Partition] = o.Offset
		}
	})
	resolved, err := resolutions(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var out []deadLetter
	idle := time.Now()
	for len(remaining) > 0 {
		if time.Since(idle) > 10*time.Second {
			break // what is left below the end offsets holds no records
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("read %s: %w", topic, e.Err)
			}
		}
		if fs.NumRecords() > 0 {
			idle = time.Now()
		}
		fs.EachRecord(func(r *kgo.Record) {
			if end, ok := remaining[r.Partition]; ok && r.Offset >= end-1 {
				delete(remaining, r.Partition)
			}
			d := parseDeadLetter(r)
			d.resolution = resolved[d.source]
			switch {
			case f.class != "" && d.class != f.class,
				!since.IsZero() && d.failedAt.Before(since),
				f.entity != 0 && d.entity != f.entity,
				f.unresolved && d.resolution != "":
				return
			}
			out = append(out, d)
		})
	}
	return out, nil
}

func parseDeadLetter(r *kgo.Record) deadLetter {
	d := deadLetter{rec: r}
	h := map[string]string{}
	for _, x := range r.Headers {
		h[x.Key] = string(x.Value)
	}
	d.class, d.message, d.attempts = h[ingest.HeaderErrorClass], h[ingest.HeaderErrorMessage], h[ingest.HeaderAttempts]
	d.source = h[ingest.HeaderSourceTopic] + "/" + h[ingest.HeaderSourcePartition] + "/" + h[ingest.HeaderSourceOffset]
	d.failedAt, _ = time.Parse(time.RFC3339, h[ingest.HeaderFailedAt])
	var ev struct {
		EntityID json.Number `json:"entity_id"`
	}
	if json.Unmarshal(r.Value, &ev) == nil {
		d.entity, _ = strconv.ParseInt(string(ev.EntityID), 10, 64)
	}
	return d
}

// resolutions maps "topic/partition/offset" to the resolution recorded in
// ingest_failures, for the failures that have one.
func resolutions(ctx context.Context, cfg *config) (map[string]string, error) {
	ch, err := openClickHouse(ctx, cfg.get("clickhouse.dsn"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = ch.Close() }()
	rows, err := ch.Query(ctx, fmt.Sprintf(`SELECT source_topic, source_partition, source_offset, resolution
		FROM %s.%s FINAL WHERE resolution != ''`, cfg.get("clickhouse.database"), schema.TableFailures))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", schema.TableFailures, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var (
			topic, res string
			p          int32
			o          int64
		)
		if err := rows.Scan(&topic, &p, &o, &res); err != nil {
			return nil, err
		}
		out[fmt.Sprintf("%s/%d/%d", topic, p, o)] = res
	}
	return out, rows.Err()
}
