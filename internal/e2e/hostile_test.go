package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type hostile struct {
	name, raw, class string
}

// hostileCorpus is one record of each kind of bad input, with the error
// class the SPEC's rules give it, written here by hand.
func hostileCorpus() []hostile {
	const ok = `"event_id":"h-%s","entity_id":1,"occurred_at":"2026-10-28T00:00:00Z","type":"sale"`
	rec := func(name, fields string) string {
		return `{` + fmt.Sprintf(ok, name) + fields + `}`
	}
	without := func(name, drop, extra string) string {
		parts := map[string]string{
			"event_id":    `"event_id":"h-` + name + `"`,
			"entity_id":   `"entity_id":1`,
			"occurred_at": `"occurred_at":"2026-10-28T00:00:00Z"`,
			"type":        `"type":"sale"`,
		}
		var fs []string
		for _, k := range []string{"event_id", "entity_id", "occurred_at", "type"} {
			if k != drop {
				fs = append(fs, parts[k])
			}
		}
		if extra != "" {
			fs = append(fs, extra)
		}
		return "{" + strings.Join(fs, ",") + "}"
	}
	return []hostile{
		{"truncated", `{"event_id":"h-trunc","entity_id":1,"occ`, "invalid_json"},
		{"empty", ``, "invalid_json"},
		{"garbage", `hello world`, "invalid_json"},
		{"trailing garbage", rec("trail", "") + ` x`, "invalid_json"},
		{"two objects", rec("two", "") + rec("two2", ""), "invalid_json"},
		{"single quotes", `{'event_id':'h-sq'}`, "invalid_json"},
		{"array", `[1,2,3]`, "not_object"},
		{"string", `"an event"`, "not_object"},
		{"number", `42`, "not_object"},
		{"null", `null`, "not_object"},
		{"invalid utf8", "{\"event_id\":\"h-\xff\xfe\",\"entity_id\":1}", "invalid_utf8"},
		{"10 MB record", `{"pad":"` + strings.Repeat("x", 10<<20) + `",` + fmt.Sprintf(ok, "big") + `}`, "oversize"},
		{"duplicate key", rec("dup", `,"type":"refund"`), "duplicate_key"},
		{"deeply nested", rec("deep", `,"x":`+strings.Repeat("[", 50000)+strings.Repeat("]", 50000)), "invalid_json"},
		{"event_id missing", without("x", "event_id", ""), "missing_field"},
		{"event_id null", without("x", "event_id", `"event_id":null`), "missing_field"},
		{"event_id empty", without("x", "event_id", `"event_id":""`), "invalid_field"},
		{"event_id number", without("x", "event_id", `"event_id":17`), "wrong_type"},
		{"event_id too long", without("x", "event_id", `"event_id":"`+strings.Repeat("e", 300)+`"`), "invalid_field"},
		{"entity_id missing", without("noent", "entity_id", ""), "missing_field"},
		{"entity_id null", without("nullent", "entity_id", `"entity_id":null`), "missing_field"},
		{"entity_id zero", without("zero", "entity_id", `"entity_id":0`), "invalid_field"},
		{"entity_id negative", without("neg", "entity_id", `"entity_id":-7`), "invalid_field"},
		{"entity_id past 2^63", without("big", "entity_id", `"entity_id":9223372036854775808`), "overflow"},
		{"entity_id string", without("str", "entity_id", `"entity_id":"12"`), "wrong_type"},
		{"entity_id fraction", without("frac", "entity_id", `"entity_id":1.5`), "invalid_field"},
		{"entity_id bool", without("bool", "entity_id", `"entity_id":true`), "wrong_type"},
		{"entity unknown", without("unk", "entity_id", `"entity_id":987654321`), "unknown_entity"},
		{"occurred_at missing", without("noat", "occurred_at", ""), "missing_field"},
		{"occurred_at without zone", without("nozone", "occurred_at", `"occurred_at":"2026-10-28T00:00:00"`), "bad_timestamp"},
		{"occurred_at year 9999", without("y9999", "occurred_at", `"occurred_at":"9999-10-28T00:00:00Z"`), "bad_timestamp"},
		{"occurred_at year 1", without("y1", "occurred_at", `"occurred_at":"0001-01-01T00:00:00Z"`), "bad_timestamp"},
		{"occurred_at number", without("atnum", "occurred_at", `"occurred_at":1761609600`), "wrong_type"},
		{"occurred_at words", without("atwords", "occurred_at", `"occurred_at":"yesterday"`), "bad_timestamp"},
		{"type missing", without("notype", "type", ""), "missing_field"},
		{"type empty", without("emptytype", "type", `"type":""`), "invalid_field"},
		{"type object", without("objtype", "type", `"type":{"a":1}`), "wrong_type"},
		{"type too long", without("longtype", "type", `"type":"`+strings.Repeat("t", 200)+`"`), "invalid_field"},
		{"amount too many decimals", rec("prec", `,"amount":"1.00001"`), "bad_decimal"},
		{"amount NaN", rec("nan", `,"amount":"NaN"`), "bad_decimal"},
		{"amount Infinity", rec("inf", `,"amount":"Infinity"`), "bad_decimal"},
		{"amount empty string", rec("emptyamt", `,"amount":""`), "bad_decimal"},
		{"amount huge exponent", rec("exp", `,"amount":1e400`), "overflow"},
		{"amount overflow", rec("ovf", `,"amount":"99999999999999999999"`), "overflow"},
		{"amount bool", rec("amtbool", `,"amount":false`), "wrong_type"},
		{"amount object", rec("amtobj", `,"amount":{"v":1}`), "wrong_type"},
		{"quantity string", rec("qstr", `,"quantity":"3"`), "wrong_type"},
		{"quantity fraction", rec("qfrac", `,"quantity":2.5`), "invalid_field"},
		{"quantity overflow", rec("qovf", `,"quantity":99999999999999999999`), "overflow"},
	}
}

// TestHostileInputDeadLettered mixes two of each hostile kind (49 kinds, a
// 10 MB record among them) into a stream of valid events read by two
// workers: every bad record must reach the dead-letter topic with its class
// and original bytes, every valid event must count exactly once (the oracle
// check), no partition may stall and no worker may exit.
func TestHostileInputDeadLettered(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 3)
	sc := e.setUp(seed, 1000, 20000)
	keys, values := sc.records()
	rng := rand.New(rand.NewPCG(uint64(seed), 5))
	want := map[string]string{} // raw → class
	corpus := hostileCorpus()
	for round := 0; round < 2; round++ {
		for _, h := range corpus {
			raw := h.raw
			if round == 1 && strings.Contains(raw, `"h-`) {
				raw = strings.Replace(raw, `"h-`, `"h2-`, 1)
			}
			i := rng.IntN(len(values) + 1)
			keys = append(keys[:i], append([][]byte{[]byte("hostile")}, keys[i:]...)...)
			values = append(values[:i], append([][]byte{[]byte(raw)}, values[i:]...)...)
			want[raw] = h.class
		}
	}
	w1, w2 := e.startWorker(1), e.startWorker(2)
	e.produce(keys, values)
	e.waitAcked(uint64(len(values)), 10*time.Minute)
	for _, w := range []*worker{w1, w2} {
		select {
		case <-w.done:
			t.Fatalf("a worker exited during the hostile stream (log %s)", w.log)
		default:
		}
	}
	w1.stop(t)
	w2.stop(t)
	e.verify(sc)

	got := map[string]string{}
	e.eachRecord(e.dlq, func(r *kgo.Record) {
		class, sum, size := "", "", ""
		for _, h := range r.Headers {
			switch h.Key {
			case "canopy.error.class":
				class = string(h.Value)
			case "canopy.raw.sha256":
				sum = string(h.Value)
			case "canopy.raw.bytes":
				size = string(h.Value)
			}
		}
		if sum != "" {
			// A payload too large to dead-letter whole comes truncated,
			// named by its size and hash (docs/failures.md).
			got["sha256:"+sum+" bytes:"+size+" prefix:"+string(r.Value[:min(len(r.Value), 32)])] = class
			return
		}
		got[string(r.Value)] = class
	})
	truncatedKey := func(raw string) string {
		sum := sha256.Sum256([]byte(raw))
		return fmt.Sprintf("sha256:%s bytes:%d prefix:%s", hex.EncodeToString(sum[:]), len(raw), raw[:min(len(raw), 32)])
	}
	var bad []string
	for raw, class := range want {
		g, ok := got[raw]
		if !ok && len(raw) > 512<<10 {
			g, ok = got[truncatedKey(raw)]
		}
		name := raw
		if len(name) > 60 {
			name = name[:60] + "…"
		}
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("not dead-lettered (want %s): %q", class, name))
		case g != class:
			bad = append(bad, fmt.Sprintf("class %s, want %s: %q", g, class, name))
		}
	}
	if len(got) != len(want) {
		bad = append(bad, fmt.Sprintf("the dead-letter topic holds %d distinct records, want %d", len(got), len(want)))
	}
	if len(bad) > 0 {
		t.Errorf("dead letters differ:\n%s", strings.Join(bad, "\n"))
	}
}

// eachRecord reads a topic from its start to its end.
func (e *env) eachRecord(topic string, fn func(*kgo.Record)) {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.svc.brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxBytes(64<<20))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ends := map[int32]int64{}
	offs, err := e.admin.ListEndOffsets(context.Background(), topic)
	if err != nil {
		e.t.Fatal(err)
	}
	for p, o := range offs[topic] {
		if o.Offset > 0 {
			ends[p] = o.Offset
		}
	}
	deadline := time.Now().Add(time.Minute)
	for len(ends) > 0 && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			fn(r)
			if r.Offset >= ends[r.Partition]-1 {
				delete(ends, r.Partition)
			}
		})
	}
	if len(ends) > 0 {
		e.t.Fatalf("could not read %s to its end", topic)
	}
}
