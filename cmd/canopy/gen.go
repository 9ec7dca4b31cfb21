package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/internal/synth"
)

type genOptions struct {
	entities     int
	events       int
	rate         float64
	seed         int64
	days         int
	duplicates   float64
	hierarchyCSV string
	eventsFile   string
}

func newGen(cfg *config) *cobra.Command {
	var o genOptions
	cmd := &cobra.Command{
		Use:   "gen",
		Short: "Generate a synthetic hierarchy (imported into PostgreSQL) and events (produced to Kafka)",
		Long: `gen creates demo and benchmark data. With --entities it synthesizes a forest of
that many entities (about 7 hierarchies, mean ancestor chain about 7) and imports
it, or writes it to --hierarchy-csv. With --events it produces that many events
to the events topic (at --rate per second if set), or writes them to --events-file
as NDJSON. The same --seed gives the same data.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runGen(cmd.Context(), cfg, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.entities, "entities", 0, "entities to synthesize (0 = keep the current hierarchy)")
	f.IntVar(&o.events, "events", 0, "events to generate")
	f.Float64Var(&o.rate, "rate", 0, "events per second (0 = as fast as possible)")
	f.Int64Var(&o.seed, "seed", 1, "random seed")
	f.IntVar(&o.days, "days", 30, "days of occurred_at the events span, ending today")
	f.Float64Var(&o.duplicates, "duplicates", 0, "fraction of events that repeat an earlier event_id")
	f.StringVar(&o.hierarchyCSV, "hierarchy-csv", "", "write the hierarchy here instead of importing it")
	f.StringVar(&o.eventsFile, "events-file", "", "write events here as NDJSON instead of producing them")
	return cmd
}

func runGen(ctx context.Context, cfg *config, o genOptions) error {
	log := cfg.logger()
	if o.entities < 0 || o.events < 0 || o.days < 1 {
		return usageError{fmt.Errorf("--entities and --events must be >= 0, --days >= 1")}
	}
	entities := int64(o.entities)
	if o.entities > 0 {
		forest := hierarchy.Synthesize(o.entities, o.seed)
		var buf bytes.Buffer
		if err := hierarchy.WriteCSV(&buf, forest); err != nil {
			return err
		}
		if o.hierarchyCSV != "" {
			if err := os.WriteFile(o.hierarchyCSV, buf.Bytes(), 0o644); err != nil { //nolint:gosec // a data file
				return err
			}
			log.Info("hierarchy written", "file", o.hierarchyCSV, "entities", o.entities)
		} else {
			pool, err := openPostgres(ctx, cfg)
			if err != nil {
				return err
			}
			stats, err := hierarchy.Import(ctx, pool, &buf, hierarchy.ImportOptions{})
			pool.Close()
			if err != nil {
				return err
			}
			log.Info("hierarchy imported", "rows", stats.Rows, "inserted", stats.Inserted, "updated", stats.Updated, "took", stats.Elapsed.Round(time.Millisecond))
		}
	}
	if o.events == 0 {
		return nil
	}
	if entities == 0 {
		pool, err := openPostgres(ctx, cfg)
		if err != nil {
			return err
		}
		err = pool.QueryRow(ctx, "select coalesce(max(id), 0) from canopy.entities").Scan(&entities)
		pool.Close()
		if err != nil {
			return fmt.Errorf("read hierarchy size: %w", err)
		}
		if entities == 0 {
			return fmt.Errorf("the hierarchy is empty: import one or pass --entities")
		}
	}
	span := time.Duration(o.days) * 24 * time.Hour
	gen := synth.Events{Seed: o.seed, Count: o.events, Entities: entities, Start: time.Now().UTC().Add(-span).Truncate(time.Hour), Span: span, Duplicates: o.duplicates}
	if o.eventsFile != "" {
		return writeEventsFile(o.eventsFile, gen)
	}
	return produceEvents(ctx, cfg, gen, o.rate, nil, nil)
}

func writeEventsFile(path string, gen synth.Events) error {
	f, err := os.Create(path) //nolint:gosec // the user's path
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = gen.Each(func(_ int, e synth.Event) error {
		_, _ = w.Write(e.JSON())
		return w.WriteByte('\n')
	})
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// produceEvents produces gen to the events topic, keyed by entity id, and
// waits for every ack. It logs progress every few seconds and, when acked is
// not nil, counts acknowledged records there.
func produceEvents(ctx context.Context, cfg *config, gen synth.Events, rate float64, acked *atomic.Int64, extra []kgo.Opt) error {
	log := cfg.logger()
	cl, err := kgo.NewClient(cfg.kafkaOpts(append([]kgo.Opt{
		kgo.AllowAutoTopicCreation(),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.ProducerBatchMaxBytes(1 << 20),
	}, extra...)...)...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	topic := cfg.get("kafka.events_topic")
	if acked == nil {
		acked = new(atomic.Int64)
	}
	var (
		mu       sync.Mutex
		firstErr error
	)
	start := time.Now()
	lastLog := start
	err = gen.Each(func(i int, e synth.Event) error {
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(d):
				}
			}
		}
		rec := &kgo.Record{Topic: topic, Key: []byte(strconv.FormatInt(e.EntityID, 10)), Value: e.JSON()}
		cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			acked.Add(1)
		})
		if time.Since(lastLog) > 5*time.Second {
			lastLog = time.Now()
			log.Info("producing", "produced", i+1, "acked", acked.Load(), "of", gen.Count, "rate", int(float64(i+1)/time.Since(start).Seconds()))
		}
		return ctx.Err()
	})
	if ferr := cl.Flush(context.WithoutCancel(ctx)); err == nil {
		err = ferr
	}
	if err == nil {
		err = firstErr
	}
	if err != nil {
		return fmt.Errorf("produce to %s: %w", topic, err)
	}
	log.Info("events produced", "topic", topic, "events", gen.Count, "took", time.Since(start).Round(time.Millisecond))
	return nil
}
