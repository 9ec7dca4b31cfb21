package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/canopyhq/canopy/schema"
)

// Event is one decoded, valid event.
type Event struct {
	ID         string
	EntityID   int64
	OccurredAt time.Time // UTC
	Type       string
	// Measures holds one value per declared measure, in schema order: a count
	// of 10^-scale units for decimals, the value for int64s. Missing = 0.
	Measures []int64
}

// Limits of a valid event.
const (
	maxEventIDBytes = 128
	maxTypeBytes    = 64
	// DefaultMaxRecordBytes is the largest record the decoder accepts.
	DefaultMaxRecordBytes = 1 << 20
)

// Times outside what ClickHouse DateTime holds cannot be bucketed.
var (
	minTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2106, 1, 1, 0, 0, 0, 0, time.UTC)
)

// Decoder turns raw record values into Events. It is strict: a record that
// breaks a rule of the SPEC is a *PoisonError naming the rule, never a
// silently repaired event. A Decoder is safe for concurrent use.
type Decoder struct {
	measures schema.Measures
	index    map[string]int
	maxBytes int
}

// NewDecoder returns a decoder for the given (validated) measures. maxBytes
// <= 0 means DefaultMaxRecordBytes.
func NewDecoder(ms schema.Measures, maxBytes int) *Decoder {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxRecordBytes
	}
	d := &Decoder{measures: ms, index: make(map[string]int, len(ms)), maxBytes: maxBytes}
	for i, m := range ms {
		d.index[m.Name] = i
	}
	return d
}

// Decode parses raw into ev (reusing ev.Measures). The error, if any, is a
// *PoisonError.
//
// It checks that raw is JSON while it reads the fields, in one pass: a
// field's error is kept while the rest is checked, so a record that is not
// valid JSON is refused as such wherever its fault lies, as it would be by
// json.Valid before the fields were read. TestDecodeMatchesEncodingJSON and
// FuzzDecodeMatchesEncodingJSON hold it to a decoder built on encoding/json.
func (d *Decoder) Decode(raw []byte, ev *Event) error {
	if len(raw) > d.maxBytes {
		return poison(ClassOversize, "record of %d bytes exceeds the limit of %d", len(raw), d.maxBytes)
	}
	if !utf8.Valid(raw) {
		return poison(ClassInvalidUTF8, "record is not valid UTF-8")
	}
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		if !validJSON(raw) {
			return errInvalidJSON()
		}
		return poison(ClassNotObject, "record is JSON but not an object")
	}
	d.reset(ev)
	var st fieldsRead
	var bad error // the first field's error, once raw is known to be JSON
	if i = skipSpace(raw, i+1); i < len(raw) && raw[i] == '}' {
		i++
	} else {
		for {
			// A key starts at i.
			if i >= len(raw) || raw[i] != '"' {
				return errInvalidJSON()
			}
			end := endOfString(raw, i)
			if end < 0 {
				return errInvalidJSON()
			}
			key := raw[i:end]
			if i = skipSpace(raw, end); i >= len(raw) || raw[i] != ':' {
				return errInvalidJSON()
			}
			i = skipSpace(raw, i+1)
			if end = endOfValue(raw, i, 1); end < 0 {
				return errInvalidJSON()
			}
			if bad == nil {
				k, _ := unquoteBytes(key) // a valid string: no error
				bad = d.field(&st, k, raw[i:end], ev)
			}
			if i = skipSpace(raw, end); i >= len(raw) {
				return errInvalidJSON()
			}
			if raw[i] == '}' {
				i++
				break
			}
			if raw[i] != ',' {
				return errInvalidJSON()
			}
			i = skipSpace(raw, i+1)
		}
	}
	if skipSpace(raw, i) != len(raw) {
		return errInvalidJSON()
	}
	if bad != nil {
		return bad
	}
	return st.missing()
}

func errInvalidJSON() error { return poison(ClassInvalidJSON, "record is not valid JSON") }

// reset makes ev.Measures one zero per measure.
func (d *Decoder) reset(ev *Event) {
	if cap(ev.Measures) < len(d.measures) {
		ev.Measures = make([]int64, len(d.measures))
	}
	ev.Measures = ev.Measures[:len(d.measures)]
	clear(ev.Measures)
}

// fieldsRead is what Decode has read of a record's fields so far.
type fieldsRead struct {
	id, entity, at, typ bool
	measures            uint64 // bit per measure index < schema.MaxMeasures (64)
	other               map[string]bool
}

// field reads one top-level field of an event: key decoded, val its raw
// (valid JSON) value.
func (d *Decoder) field(st *fieldsRead, key, val []byte, ev *Event) error {
	dup := false
	switch string(key) { // compared, not allocated
	case "event_id":
		dup, st.id = st.id, true
		if !dup {
			if err := decodeString(val, "event_id", maxEventIDBytes, &ev.ID); err != nil {
				return err
			}
		}
	case "entity_id":
		dup, st.entity = st.entity, true
		if !dup {
			if err := decodeEntityID(val, &ev.EntityID); err != nil {
				return err
			}
		}
	case "occurred_at":
		dup, st.at = st.at, true
		if !dup {
			if err := decodeTime(val, &ev.OccurredAt); err != nil {
				return err
			}
		}
	case "type":
		dup, st.typ = st.typ, true
		if !dup {
			if err := decodeString(val, "type", maxTypeBytes, &ev.Type); err != nil {
				return err
			}
		}
	default:
		if mi, ok := d.index[string(key)]; ok && mi < schema.MaxMeasures { // Validate allows no more
			dup = st.measures&(1<<mi) != 0
			st.measures |= 1 << mi
			if !dup {
				v, err := decodeMeasure(val, d.measures[mi])
				if err != nil {
					return err
				}
				ev.Measures[mi] = v
			}
		} else {
			// Unknown fields are ignored, but a repeated one is still an
			// ambiguous record.
			if st.other == nil {
				st.other = map[string]bool{}
			}
			dup = st.other[string(key)]
			st.other[string(key)] = true
		}
	}
	if dup {
		return poison(ClassDuplicateKey, "field %q appears more than once", key)
	}
	return nil
}

// missing is the error for a required field not read, or nil.
func (st *fieldsRead) missing() error {
	switch {
	case !st.id:
		return poison(ClassMissingField, "event_id is missing")
	case !st.entity:
		return poison(ClassMissingField, "entity_id is missing")
	case !st.at:
		return poison(ClassMissingField, "occurred_at is missing")
	case !st.typ:
		return poison(ClassMissingField, "type is missing")
	}
	return nil
}

func isNull(val []byte) bool { return len(val) == 4 && string(val) == "null" }

func decodeString(val []byte, field string, maxLen int, dst *string) error {
	if isNull(val) {
		return poison(ClassMissingField, "%s is null", field)
	}
	if val[0] != '"' {
		return poison(ClassWrongType, "%s must be a string", field)
	}
	s, err := unquote(val)
	if err != nil {
		return poison(ClassInvalidField, "%s: %v", field, err)
	}
	if len(s) == 0 {
		return poison(ClassInvalidField, "%s is empty", field)
	}
	if len(s) > maxLen {
		return poison(ClassInvalidField, "%s is %d bytes, more than %d", field, len(s), maxLen)
	}
	if !utf8.ValidString(s) {
		return poison(ClassInvalidUTF8, "%s is not valid UTF-8", field)
	}
	*dst = s
	return nil
}

func decodeEntityID(val []byte, dst *int64) error {
	if isNull(val) {
		return poison(ClassMissingField, "entity_id is null")
	}
	if !isNumber(val) {
		return poison(ClassWrongType, "entity_id must be a JSON integer")
	}
	v, err := schema.ParseInt(val)
	switch {
	case err == schema.ErrNumberRange:
		return poison(ClassOverflow, "entity_id %s is out of range", val)
	case err != nil:
		return poison(ClassInvalidField, "entity_id %s is not an integer", val)
	case v < 1:
		return poison(ClassInvalidField, "entity_id %d must be at least 1", v)
	}
	*dst = v
	return nil
}

func decodeTime(val []byte, dst *time.Time) error {
	if isNull(val) {
		return poison(ClassMissingField, "occurred_at is null")
	}
	if val[0] != '"' {
		return poison(ClassWrongType, "occurred_at must be an RFC 3339 string")
	}
	s, err := unquoteBytes(val)
	if err != nil {
		return poison(ClassBadTimestamp, "occurred_at: %v", err)
	}
	// time.RFC3339 requires an offset ("Z" or ±hh:mm); a time without a zone
	// is ambiguous and refused.
	t, err := parseTime(s)
	if err != nil {
		return poison(ClassBadTimestamp, "occurred_at %q is not RFC 3339 with an offset", s)
	}
	t = t.UTC()
	if t.Before(minTime) || !t.Before(maxTime) {
		return poison(ClassBadTimestamp, "occurred_at %q is outside 1970 … 2105", s)
	}
	*dst = t
	return nil
}

func decodeMeasure(val []byte, m schema.Measure) (int64, error) {
	if isNull(val) {
		return 0, nil // a null measure is a missing measure
	}
	lit := val
	if val[0] == '"' {
		if m.Kind != schema.KindDecimal {
			return 0, poison(ClassWrongType, "%s must be a JSON integer", m.Name)
		}
		s, err := unquoteBytes(val)
		if err != nil {
			return 0, poison(ClassBadDecimal, "%s: %v", m.Name, err)
		}
		lit = s
	} else if !isNumber(val) {
		return 0, poison(ClassWrongType, "%s must be a number", m.Name)
	}
	var v int64
	var err error
	if m.Kind == schema.KindDecimal {
		v, err = schema.ParseDecimal(lit, m.Scale)
	} else {
		v, err = schema.ParseInt(lit)
	}
	switch err {
	case nil:
		return v, nil
	case schema.ErrNumberRange:
		return 0, poison(ClassOverflow, "%s %s is out of range", m.Name, lit)
	case schema.ErrTooManyDecimals:
		return 0, poison(ClassBadDecimal, "%s %s has more than %d decimal places", m.Name, lit, m.Scale)
	default:
		if m.Kind == schema.KindDecimal {
			return 0, poison(ClassBadDecimal, "%s %q is not a decimal number", m.Name, lit)
		}
		return 0, poison(ClassInvalidField, "%s %s is not an integer", m.Name, lit)
	}
}

func isNumber(val []byte) bool {
	c := val[0]
	return c == '-' || (c >= '0' && c <= '9')
}

// unquote decodes a JSON string literal, taking the fast path when it has no
// escapes.
func unquote(val []byte) (string, error) {
	inner := val[1 : len(val)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), nil
	}
	var s string
	err := json.Unmarshal(val, &s)
	return s, err
}

// errNotString is unquoteBytes' answer to a value too short to be a string.
var errNotString = errors.New("not a JSON string")

// unquoteBytes is unquote for a value read only in place: without escapes
// it is val's own bytes, not a copy.
func unquoteBytes(val []byte) ([]byte, error) {
	if len(val) < 2 {
		return nil, errNotString // only where the scanner ran out of bytes
	}
	inner := val[1 : len(val)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner, nil
	}
	s, err := unquote(val)
	return []byte(s), err
}

// parseTime is time.Parse(time.RFC3339Nano, string(b)) without the copy
// to a string: Time.UnmarshalText reads RFC 3339 from bytes, and where it
// accepts b, time.Parse gives the same instant (both take the same fast
// path first, and its fallback is time.Parse(RFC3339), which accepts
// fractional seconds as RFC3339Nano does). Where it refuses b, time.Parse
// decides, so no time is refused that time.Parse accepts.
func parseTime(b []byte) (time.Time, error) {
	var t time.Time
	if t.UnmarshalText(b) == nil {
		return t, nil
	}
	return time.Parse(time.RFC3339Nano, string(b))
}

// scanner walks JSON without checking it, to find an event's id: over what
// validJSON accepted (EventIDOf), where it reads the fields Decode reads,
// or over any bytes (routeKey). It never reads past the end of what it is
// given: out of bytes, a value ends at the end (an unterminated string is
// nil) and field reports no more.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// field returns the next key (decoded, valid until the next call) and raw
// value of the object the cursor is in, or more = false at its closing
// brace.
func (s *scanner) field() (key []byte, val []byte, more bool) {
	s.space()
	if s.i >= len(s.b) || s.b[s.i] == '}' {
		return nil, nil, false
	}
	if s.b[s.i] == ',' {
		s.i++
		s.space()
	}
	key = s.str()
	s.space()
	s.i++ // ':'
	s.space()
	return key, s.value(), true
}

// str returns the decoded string at the cursor (a key), in place unless
// it has escapes.
func (s *scanner) str() []byte {
	k, _ := unquoteBytes(s.value())
	return k
}

// value returns the raw bytes of the value at the cursor and moves past it.
func (s *scanner) value() []byte {
	start := s.i
	if s.i >= len(s.b) {
		return nil
	}
	switch s.b[s.i] {
	case '"':
		s.i++
		for s.i < len(s.b) && s.b[s.i] != '"' {
			if s.b[s.i] == '\\' {
				s.i++
			}
			s.i++
		}
		if s.i >= len(s.b) {
			s.i = len(s.b) // an escape may have stepped past it
			return nil
		}
		s.i++
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				s.value()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			s.i++
			if depth == 0 {
				break
			}
		}
	default:
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return s.b[start:s.i]
			}
			s.i++
		}
	}
	return s.b[start:s.i]
}

// EventIDOf returns the event_id of raw without decoding the rest; ok is
// false when raw has none that Decode would accept.
func EventIDOf(raw []byte) (id string, ok bool) {
	if len(raw) > DefaultMaxRecordBytes || !validJSON(raw) {
		return "", false
	}
	val := eventIDValue(raw)
	return id, val != nil && decodeString(val, "event_id", maxEventIDBytes, &id) == nil
}

// routeKey is the by-id topic's key for raw: for every record Decode
// accepts, the bytes of the event_id it reads (in place unless escaped);
// for any other record, what looks like its id or nil. Those are dead
// letters in whichever partition they land, so the router need not run
// validJSON over every record (a third of its work) to find them.
func routeKey(raw []byte) []byte {
	val := eventIDValue(raw)
	if len(val) < 2 || val[0] != '"' {
		return nil
	}
	k, err := unquoteBytes(val)
	if err != nil || len(k) == 0 {
		return nil
	}
	return k
}

// eventIDValue is the raw value of raw's first top-level event_id, the one
// Decode reads, or nil. raw need not be JSON.
func eventIDValue(raw []byte) []byte {
	s := scanner{b: raw}
	s.space()
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return nil
	}
	s.i++
	for {
		key, val, more := s.field()
		if !more {
			return nil
		}
		if string(key) == "event_id" {
			return val
		}
	}
}
