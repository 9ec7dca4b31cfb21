package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The canopy.* record headers: Canopy writes them on its own topics (retry,
// dead letters, by-id) and honours them only there. This file is their one
// codec: the names, the encoders (EncodeFailure, SourceHeaders,
// ReplayHeaders) and the decoder (DecodeOrigin), used by the retry and
// dead-letter publishers, the router, the backfill's forwarding, the batch
// path and canopy dlq.
const (
	// HeaderErrorClass is a failure's Class.
	HeaderErrorClass = "canopy.error.class"
	// HeaderErrorMessage is a failure's message.
	HeaderErrorMessage = "canopy.error.message"
	// HeaderAttempts counts a failed record's attempts so far, the first
	// included.
	HeaderAttempts = "canopy.attempts"
	// HeaderSourceTopic, HeaderSourcePartition and HeaderSourceOffset name
	// the record a failure, retry or by-id copy stands for; the three
	// together, or none.
	HeaderSourceTopic     = "canopy.source.topic"
	HeaderSourcePartition = "canopy.source.partition"
	HeaderSourceOffset    = "canopy.source.offset"
	// HeaderSource is the three source headers folded into one,
	// "topic/partition/offset" (the topic may hold slashes: the last two
	// fields are read from the right). The router and the backfill write it
	// on the records of the by-id topic, Canopy's own, where one header in
	// place of three is a fifth less to write, send and read per event;
	// failures name their source with the three (EncodeFailure).
	HeaderSource = "canopy.source"
	// HeaderFailedAt is when the record failed this time (RFC 3339).
	HeaderFailedAt = "canopy.failed.at"
	// HeaderFirstFailure is when the record first failed (RFC 3339).
	HeaderFirstFailure = "canopy.first.failure"
	// HeaderRetryAt is when a record on the retry topic is due again (RFC
	// 3339 with fractions).
	HeaderRetryAt = "canopy.retry.at"
	// HeaderReplay marks a dead letter replayed by canopy dlq replay; its
	// success resolves the failure named by the source headers. Its value
	// names the dead letter (topic/partition/offset).
	HeaderReplay = "canopy.replay"
	// HeaderRetryOf carries, on a retried or replayed record, the by-id
	// offset of the record that holds its event id's claim
	// (PartitionedClaims): the retry takes that claim over.
	HeaderRetryOf = "canopy.retry.of"
	// HeaderBackfill marks a record a backfill forwarded to the by-id topic
	// (Forward): like a backfill's own batches, it is dead-lettered at once
	// when its entity is still unknown after a catch-up, not retried.
	HeaderBackfill = "canopy.backfill"
	// HeaderReleaseOf marks a release marker of the by-id topic: its key is
	// an event id and the header the by-id offset of the id's owner, which
	// was dead-lettered for good; the id is free again for later records
	// (PartitionedClaims). Only the by-id stage writes it.
	HeaderReleaseOf = "canopy.release.of"
	// HeaderRawBytes is the size of a payload cut short to fit a topic.
	HeaderRawBytes = "canopy.raw.bytes"
	// HeaderRawSHA256 is the hex SHA-256 of a payload cut short.
	HeaderRawSHA256 = "canopy.raw.sha256"
)

// Origin is what a record's canopy headers say about it: an earlier failure
// (on the retry topic, or replayed from the dead letters), the record of the
// events topic it was routed from, a truncated payload, a release marker.
// DecodeOrigin reads it; a record without canopy headers has the zero
// Origin but for RetryOf, -1.
type Origin struct {
	Known    bool   // the record names a source (the three source headers)
	Source   Source // First == Last == the source offset
	Attempts uint32
	First    time.Time // first failure
	FailedAt time.Time // latest failure (dead letters)
	RetryAt  time.Time // due time on the retry topic
	Replay   bool      // HeaderReplay: a dead letter replayed by canopy dlq
	Backfill bool      // HeaderBackfill
	RetryOf  int64     // HeaderRetryOf, or -1
	Class    Class
	Message  string
	// RawBytes and RawSHA256 name the original of a payload cut short (both
	// headers valid), else 0 and "".
	RawBytes  int
	RawSHA256 string
	// Release marks a release marker naming the owner's by-id offset
	// ReleaseOf (see releaseOf for the record's other conditions).
	Release   bool
	ReleaseOf int64
}

// canopyHeaderPrefix starts the key of every header Canopy writes.
const canopyHeaderPrefix = "canopy."

// isCanopyHeader reports whether key is one of Canopy's headers.
func isCanopyHeader(key string) bool { return strings.HasPrefix(key, canopyHeaderPrefix) }

// DecodeOrigin reads the canopy headers of a record in one pass over them;
// where a header repeats, its first value counts. Malformed headers are
// ignored: the record is then treated as new.
func DecodeOrigin(hs []kgo.RecordHeader) Origin {
	o := Origin{RetryOf: -1}
	if len(hs) == 0 {
		return o
	}
	var seen uint16 // a bit per header below, once read
	first := func(bit uint16) bool {
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	}
	var topic, part, off, folded, rawBytes, rawSum []byte
	for _, h := range hs {
		if !isCanopyHeader(h.Key) {
			continue
		}
		switch h.Key {
		case HeaderSourceTopic:
			if first(1 << 0) {
				topic = h.Value
			}
		case HeaderSourcePartition:
			if first(1 << 1) {
				part = h.Value
			}
		case HeaderSourceOffset:
			if first(1 << 2) {
				off = h.Value
			}
		case HeaderSource:
			if first(1 << 13) {
				folded = h.Value
			}
		case HeaderAttempts:
			if first(1 << 3) {
				if n, err := strconv.ParseUint(string(h.Value), 10, 32); err == nil {
					o.Attempts = uint32(n)
				}
			}
		case HeaderFirstFailure:
			if first(1 << 4) {
				o.First, _ = time.Parse(time.RFC3339, string(h.Value))
			}
		case HeaderRetryAt:
			if first(1 << 5) {
				o.RetryAt, _ = time.Parse(time.RFC3339Nano, string(h.Value))
			}
		case HeaderErrorClass:
			if first(1 << 6) {
				o.Class = Class(h.Value)
			}
		case HeaderErrorMessage:
			if first(1 << 7) {
				o.Message = string(h.Value)
			}
		case HeaderReplay:
			o.Replay = true
		case HeaderBackfill:
			o.Backfill = true
		case HeaderRetryOf:
			if first(1 << 8) {
				if n, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil && n >= 0 {
					o.RetryOf = n
				}
			}
		case HeaderFailedAt:
			if first(1 << 9) {
				o.FailedAt, _ = time.Parse(time.RFC3339, string(h.Value))
			}
		case HeaderRawBytes:
			if first(1 << 10) {
				rawBytes = h.Value
			}
		case HeaderRawSHA256:
			if first(1 << 11) {
				rawSum = h.Value
			}
		case HeaderReleaseOf:
			if first(1 << 12) {
				if n, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil && n >= 0 {
					o.Release, o.ReleaseOf = true, n
				}
			}
		}
	}
	if seen&0b111 != 0b111 && folded != nil {
		topic, part, off = unfoldSource(folded)
		if topic != nil {
			seen |= 0b111
		}
	}
	if seen&0b111 == 0b111 {
		p, err1 := strconv.ParseInt(string(part), 10, 32)
		o2, err2 := strconv.ParseInt(string(off), 10, 64)
		if err1 == nil && err2 == nil && p >= 0 && o2 >= 0 {
			o.Known = true
			o.Source = Source{Topic: internTopic(topic), Partition: int32(p), First: o2, Last: o2}
		}
	}
	if rawBytes != nil && rawSum != nil {
		if n, err := strconv.Atoi(string(rawBytes)); err == nil && n > 0 {
			o.RawBytes, o.RawSHA256 = n, string(rawSum)
		}
	}
	return o
}

// lastTopic is the source topic DecodeOrigin last made a string of.
var lastTopic atomic.Pointer[string]

// internTopic returns b as a string, the last one made if it is the same:
// every record of the by-id topic names its source topic, nearly always
// the events topic, and a new string per record took 1.4% of the worker's
// CPU in a profile.
func internTopic(b []byte) string {
	if p := lastTopic.Load(); p != nil && *p == string(b) {
		return *p
	}
	s := string(b)
	lastTopic.Store(&s)
	return s
}

// sourceOnly reports whether the only canopy headers of hs are source
// headers, as on every record the router copies from the events topic:
// then DecodeOrigin finds no retry, replay, release, backfill or cut
// payload, only (at most) a source, and a caller that needs no source
// may skip it.
func sourceOnly(hs []kgo.RecordHeader) bool {
	for _, h := range hs {
		if !isCanopyHeader(h.Key) {
			continue
		}
		switch h.Key {
		case HeaderSource, HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset:
		default:
			return false
		}
	}
	return true
}

// originOf is DecodeOrigin of r's headers.
func originOf(r Record) Origin { return DecodeOrigin(r.Headers) }

// retryAtOf is originOf(r).RetryAt, reading only that header.
func retryAtOf(r Record) time.Time { return retryAtIn(r.Headers) }

// retryAtIn is DecodeOrigin(hs).RetryAt, reading only that header.
func retryAtIn(hs []kgo.RecordHeader) time.Time {
	for _, h := range hs {
		if h.Key == HeaderRetryAt {
			at, _ := time.Parse(time.RFC3339Nano, string(h.Value))
			return at
		}
	}
	return time.Time{}
}

// EncodeFailure returns the headers that name a failure and its source,
// for the retry and dead-letter topics: its class, message, attempts,
// source, when it failed (this time and first), the original of a
// truncated payload, the claim its record holds, and for a retry when it
// is due. DecodeOrigin reads them back.
func EncodeFailure(f Failure) []kgo.RecordHeader {
	first := f.First
	if first.IsZero() {
		first = f.At
	}
	hs := make([]kgo.RecordHeader, 0, 12)
	hs = append(hs,
		kgo.RecordHeader{Key: HeaderErrorClass, Value: []byte(f.Class)},
		kgo.RecordHeader{Key: HeaderErrorMessage, Value: []byte(f.Message)},
		kgo.RecordHeader{Key: HeaderAttempts, Value: []byte(strconv.FormatUint(uint64(f.Attempts), 10))})
	hs = append(hs, SourceHeaders(f.Source)...)
	hs = append(hs,
		kgo.RecordHeader{Key: HeaderFailedAt, Value: []byte(f.At.UTC().Format(time.RFC3339))},
		kgo.RecordHeader{Key: HeaderFirstFailure, Value: []byte(first.UTC().Format(time.RFC3339))})
	if f.RawBytes > 0 {
		hs = append(hs,
			kgo.RecordHeader{Key: HeaderRawBytes, Value: []byte(strconv.Itoa(f.RawBytes))},
			kgo.RecordHeader{Key: HeaderRawSHA256, Value: []byte(f.RawSHA256)})
	}
	if f.HoldsClaim {
		hs = append(hs, kgo.RecordHeader{Key: HeaderRetryOf, Value: []byte(strconv.FormatInt(f.Claim, 10))})
	}
	if !f.RetryAt.IsZero() {
		hs = append(hs, kgo.RecordHeader{Key: HeaderRetryAt, Value: []byte(f.RetryAt.UTC().Format(time.RFC3339Nano))})
	}
	return hs
}

// SourceHeaders name src (its First offset) as the record a copy stands
// for, in the three headers of the retry and dead-letter topics.
func SourceHeaders(src Source) []kgo.RecordHeader {
	return []kgo.RecordHeader{
		{Key: HeaderSourceTopic, Value: []byte(src.Topic)},
		{Key: HeaderSourcePartition, Value: strconv.AppendInt(nil, int64(src.Partition), 10)},
		{Key: HeaderSourceOffset, Value: strconv.AppendInt(nil, src.First, 10)},
	}
}

// appendFoldedSource appends to b the value of HeaderSource for the given
// prefix ("topic/partition/", foldedPrefix) and offset.
func appendFoldedSource(b, prefix []byte, offset int64) []byte {
	return strconv.AppendInt(append(b, prefix...), offset, 10)
}

// foldedPrefix is the part of HeaderSource's value that the records of one
// source partition share.
func foldedPrefix(topic string, partition int32) []byte {
	return fmt.Appendf(nil, "%s/%d/", topic, partition)
}

// unfoldSource splits a HeaderSource value into its topic, partition and
// offset, reading the last two from the right; nils when it has no two
// slashes or an empty topic.
func unfoldSource(v []byte) (topic, partition, offset []byte) {
	j := bytes.LastIndexByte(v, '/')
	if j < 0 {
		return nil, nil, nil
	}
	i := bytes.LastIndexByte(v[:j], '/')
	if i <= 0 {
		return nil, nil, nil
	}
	return v[:i], v[i+1 : j], v[j+1:]
}

// ReplayHeaders are the headers of a dead letter sent through ingestion
// again (canopy dlq replay): its own, due at once (no HeaderRetryAt), and
// HeaderReplay naming the dead letter.
func ReplayHeaders(dead *kgo.Record) []kgo.RecordHeader {
	hs := make([]kgo.RecordHeader, 0, len(dead.Headers)+1)
	for _, h := range dead.Headers {
		if h.Key != HeaderRetryAt {
			hs = append(hs, h)
		}
	}
	return append(hs, kgo.RecordHeader{Key: HeaderReplay,
		Value: fmt.Appendf(nil, "%s/%d/%d", dead.Topic, dead.Partition, dead.Offset)})
}

// releaseHeaders mark a release marker freeing the claim held at offset
// owner of the by-id partition.
func releaseHeaders(owner int64) []kgo.RecordHeader {
	return []kgo.RecordHeader{{Key: HeaderReleaseOf, Value: []byte(strconv.FormatInt(owner, 10))}}
}

// truncated returns value cut to TruncatedBytes with the headers naming the
// original, for a record too large to be an event (see Router).
func truncated(value []byte) ([]byte, []kgo.RecordHeader) {
	sum := sha256.Sum256(value)
	n := min(len(value), TruncatedBytes)
	return value[:n:n], []kgo.RecordHeader{
		{Key: HeaderRawBytes, Value: []byte(strconv.Itoa(len(value)))},
		{Key: HeaderRawSHA256, Value: []byte(hex.EncodeToString(sum[:]))},
	}
}

// releaseOf reads a release marker: the claim it makes, if r is one.
func releaseOf(r Record) (Claim, bool) {
	o := originOf(r)
	return releaseIn(&r, &o)
}

// releaseIn is releaseOf of r, whose headers say o.
func releaseIn(r *Record, o *Origin) (Claim, bool) {
	if !o.Release || len(r.Key) == 0 || len(r.Key) > maxEventIDBytes {
		return Claim{}, false
	}
	return Claim{EventID: string(r.Key), Offset: r.Offset, Time: r.Time, RetryOf: o.ReleaseOf, Release: true}, true
}

func header(hs []kgo.RecordHeader, key string) (string, bool) {
	for _, h := range hs {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}
