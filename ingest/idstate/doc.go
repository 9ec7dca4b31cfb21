// Package idstate keeps, per partition of the by-id topic, the accepted
// first occurrence of every event id seen within a horizon, so that
// duplicates can be dropped.
//
// The state is a pure function of the partition's log: a new owner rebuilds
// it by re-reading the log, and a replay of a range that was already claimed
// gets the same answers as the first time. That is why nothing is fsynced:
// state lost in a crash is rebuilt from the log, and each Claim is written
// in one atomic batch, so what survives is always a prefix of the log.
//
// # Rule
//
// Times are compared at millisecond precision (Kafka's). For an entry e,
// an accepted occurrence f of e.ID qualifies when f.Offset < e.Offset and
// f.Time >= e.Time - Horizon; occurrences at larger offsets are ignored.
// e owns its id iff
//
//   - no occurrence qualifies (e is a new owner and is recorded), or
//   - the state already records e itself (a replay), or
//   - e.RetryOf is the offset of the latest qualifying occurrence: a retry
//     takes the claim over and is recorded in its turn, so a second copy of
//     the same retry finds itself behind the first and owns nothing; or
//   - the latest qualifying occurrence is a release (below): the id is free.
//
// A release (Entry.Release) is written to the log when the owner at its
// RetryOf was dead-lettered for good. It is recorded, and frees the id for
// the records after it, iff RetryOf is the latest qualifying occurrence and
// that is an owner; otherwise it changes nothing. Records before it are
// decided as if it were not there, so replays still decide as before.
//
// The recorded occurrences are exactly the owners, decided in offset order,
// so the state is a function of the log: a replay of any range, or a new
// owner that rebuilt the state from the log, decides the same.
//
// # Layout
//
// One Pebble DB holds every partition of the process. Ids are grouped into
// time segments of width Options.Segment so that expiry drops whole
// segments with a range deletion, never a delete per id:
//
//	'i' partition(4) segment(4) id  -> (uvarint offset<<1|release, uvarint ms into segment)...
//	'm' partition(4) 't'            -> uvarint through offset
//	'm' partition(4) 'c' segment(4) -> uvarint occurrences, uvarint smallest offset
//	's' "seg"                       -> uvarint segment width in ms
//	's' "fmt"                       -> uvarint value format (2: with releases)
//
// partition is big-endian with the sign bit flipped, segment is big-endian
// unix milliseconds divided by the segment width. A value lists the
// occurrences of the id in that segment in offset order; there is more than
// one only when Segment is wider than Horizon.
package idstate
