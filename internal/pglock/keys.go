package pglock

// Every PostgreSQL advisory lock key of Canopy, in one place: 'canopy'
// (0x63616e6f7079) followed by a two-byte purpose. Two purposes must never
// share a key: a relay once held migrate's key for as long as it ran, and
// canopy migrate waited forever beside it (5a77e22). TestKeysDistinct
// checks that the constants below are pairwise distinct and that the SQL
// migrations name only these keys.
const (
	// HierarchyWrite serializes every transaction that writes hierarchy
	// history (transaction lock), so history seqs commit in order. The
	// trigger in schema/postgres/0001_hierarchy.sql takes it by its literal
	// value, 7161126307403202561.
	HierarchyWrite int64 = 0x63616e6f70790001
	// Migrate serializes concurrent runs of the PostgreSQL migrations
	// (transaction lock, one per migration).
	Migrate int64 = 0x63616e6f70790002
	// Fence orders batch intents against the restater's fence and canopy
	// rebuild's pause (transaction lock): batches take it shared in
	// pgledger's Begin, pgledger.Fence takes it exclusively to move the
	// fence or pause writers. schema/postgres/0101_restate.sql names it by
	// its literal value, 7161126307403202563.
	Fence int64 = 0x63616e6f70790003
	// Restater is held by the one active restater (session lock, Lead).
	Restater int64 = 0x63616e6f70790004
	// Rebuild is held by the one running canopy rebuild (session lock,
	// TryHold).
	Rebuild int64 = 0x63616e6f70790005
	// Relay is held by the one active hierarchy relay (session lock, Lead).
	Relay int64 = 0x63616e6f70790006
)
