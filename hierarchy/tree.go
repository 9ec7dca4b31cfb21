// Package hierarchy is the system of record for Canopy's entity hierarchy:
// the PostgreSQL store (schema canopy, whose triggers record history and the
// outbox), the bulk importer, and the in-memory versioned Tree that the ingest
// worker uses to expand each event across its ancestors as they were at the
// event's time.
package hierarchy

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Status is an entity's lifecycle state. The zero value is StatusActive.
type Status uint8

// Statuses, in the order of their numeric values.
const (
	StatusActive Status = iota
	StatusSuspended
	StatusClosed

	// statusNone marks a tree slot reserved for an id that was named as a
	// parent before its own first version arrived.
	statusNone Status = 0xff
)

// ParseStatus parses the names used in canopy.entities.status. The empty
// string is not accepted; callers that default it do so explicitly.
func ParseStatus(s string) (Status, error) {
	switch s {
	case "active":
		return StatusActive, nil
	case "suspended":
		return StatusSuspended, nil
	case "closed":
		return StatusClosed, nil
	}
	return 0, fmt.Errorf("%w: %q (want active, suspended or closed)", ErrBadStatus, s)
}

// String returns the name stored in canopy.entities.status.
func (s Status) String() string {
	switch s {
	case StatusActive:
		return "active"
	case StatusSuspended:
		return "suspended"
	case StatusClosed:
		return "closed"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

func (s Status) valid() bool { return s <= StatusClosed }

// Change is one version of an entity: from ValidFrom on, the entity has this
// parent and status. Seq is the version's position in the history
// (canopy.entity_history.seq); a Tree applies changes in Seq order.
//
// A zero ValidFrom means the version has always existed (PostgreSQL's
// '-infinity', written by the bulk importer for entities new to the table).
type Change struct {
	Seq       int64
	ID        int64
	ParentID  int64 // 0 = root
	Status    Status
	ValidFrom time.Time
}

// Ancestor is one link of an entity's ancestor chain.
type Ancestor struct {
	ID     int64
	Depth  uint8 // 0 = the entity itself
	Status Status
}

// MaxDepth bounds an ancestor chain (entity included). Ancestors gives up
// beyond it, which is also what stops it on a cycle in bad data.
const MaxDepth = 255

// Tree is the versioned hierarchy held in memory on the ingest hot path.
//
// Tree is safe for any number of concurrent readers and one writer: Apply
// takes the write lock, every other method the read lock. Readers never
// allocate unless they return a new slice (Path).
//
// Layout: entities live at dense int32 indexes in two parallel slices; an
// open-addressing table maps ids to indexes; parents are stored as indexes so
// walking up a chain costs no hashing. Each entity keeps its latest version
// inline; older versions (a few percent of entities) sit in a shared overflow
// list, newest first. Names are not kept: the worker never needs them.
type Tree struct {
	mu sync.RWMutex

	// Per entity, by index. status is kept apart so that node packs into 24
	// bytes; a chain walk touches two cache lines per link.
	nodes  []node
	status []Status // latest version's status; statusNone = no version yet
	seq    []int64  // latest version's Seq, for lookups as of an older version

	// Overflow versions, linked newest first by ValidFrom.
	ovParent []int32
	ovStatus []Status
	ovFrom   []int64
	ovNext   []int32
	ovSeq    []int64

	// slots maps hash(id) to index+1 (0 = empty), linear probing;
	// len(slots) is a power of two kept at least twice len(nodes).
	slots []int32
	shift uint8

	n       int // entities with at least one version
	version int64
}

// node is an entity's id and latest version.
type node struct {
	id     int64
	from   int64 // ValidFrom, Unix microseconds
	parent int32 // index; -1 = root
	older  int32 // head of the overflow list; -1 = none
}

// NewTree returns an empty Tree.
func NewTree() *Tree {
	t := &Tree{}
	t.rehash(1 << 10)
	return t
}

// Errors returned by Tree.Apply.
var (
	errBadID     = errors.New("hierarchy: entity id must be positive")
	errBadParent = errors.New("hierarchy: parent id must be 0 (root) or a positive id other than the entity's own")
)

// Apply adds the version c. Versions of one entity are kept sorted by
// ValidFrom, so a back-dated change (ValidFrom before the entity's latest
// version) is inserted in order; versions with equal ValidFrom resolve to the
// one applied last. A change whose Seq is not above Version has been applied
// already and is ignored, which makes replaying a change feed idempotent.
//
// A parent that has no version yet is accepted: its slot is reserved and
// Ancestors reports chains through it as unknown until it arrives.
func (t *Tree) Apply(c Change) error {
	switch {
	case c.ID <= 0:
		return fmt.Errorf("%w: change %d has id %d", errBadID, c.Seq, c.ID)
	case c.ParentID < 0 || c.ParentID == c.ID:
		return fmt.Errorf("%w: change %d of entity %d has parent %d", errBadParent, c.Seq, c.ID, c.ParentID)
	case !c.Status.valid():
		return fmt.Errorf("%w: change %d of entity %d has status %d", ErrBadStatus, c.Seq, c.ID, c.Status)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if c.Seq <= t.version {
		return nil
	}
	idx := t.intern(c.ID)
	p := int32(-1)
	if c.ParentID != 0 {
		p = t.intern(c.ParentID)
	}
	from := micros(c.ValidFrom)
	switch {
	case t.status[idx] == statusNone:
		t.nodes[idx].parent, t.status[idx], t.nodes[idx].from, t.seq[idx] = p, c.Status, from, c.Seq
		t.n++
	case from >= t.nodes[idx].from:
		// The common case: the new version becomes the latest.
		t.nodes[idx].older = t.pushOverflow(t.nodes[idx].parent, t.status[idx], t.nodes[idx].from, t.seq[idx], t.nodes[idx].older)
		t.nodes[idx].parent, t.status[idx], t.nodes[idx].from, t.seq[idx] = p, c.Status, from, c.Seq
	default:
		// Back-dated: insert before the first older version with from <= c's,
		// so that among equal times the later-applied version wins.
		prev, cur := int32(-1), t.nodes[idx].older
		for cur >= 0 && t.ovFrom[cur] > from {
			prev, cur = cur, t.ovNext[cur]
		}
		n := t.pushOverflow(p, c.Status, from, c.Seq, cur)
		if prev < 0 {
			t.nodes[idx].older = n
		} else {
			t.ovNext[prev] = n
		}
	}
	t.version = c.Seq
	return nil
}

func (t *Tree) pushOverflow(p int32, s Status, from, seq int64, next int32) int32 {
	t.ovSeq = append(t.ovSeq, seq)
	t.ovParent = append(t.ovParent, p)
	t.ovStatus = append(t.ovStatus, s)
	t.ovFrom = append(t.ovFrom, from)
	t.ovNext = append(t.ovNext, next)
	return int32(len(t.ovNext) - 1)
}

// Ancestors appends the entity itself, its parent, grandparent … up to its
// root, as they were at time at (as-was): each link uses its version with the
// greatest ValidFrom <= at, or its first version if at precedes them all.
// It reports false, and returns dst unchanged, if id is unknown, if a link
// is an id with no version yet, or if the chain exceeds MaxDepth (a cycle in
// bad data). It does not allocate when dst has room for the chain.
func (t *Tree) Ancestors(id int64, at time.Time, dst []Ancestor) ([]Ancestor, bool) {
	return t.AncestorsAsOf(id, at, math.MaxInt64, dst)
}

// AncestorsAsOf is Ancestors using only the changes with Seq <= asOf, as if
// the later ones had not been applied yet. A batch that is replayed after a
// crash resolves with the version its first attempt used, so both attempts
// produce the same rows. An entity none of whose versions is that old is
// unknown.
func (t *Tree) AncestorsAsOf(id int64, at time.Time, asOf int64, dst []Ancestor) ([]Ancestor, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	idx, ok := t.find(id)
	if !ok || t.status[idx] == statusNone {
		return dst, false
	}
	n0 := len(dst)
	atm := micros(at)
	for depth := 0; depth < MaxDepth; depth++ {
		p, s, ok := t.versionAsOf(idx, atm, asOf)
		if !ok {
			break
		}
		dst = append(dst, Ancestor{ID: t.nodes[idx].id, Depth: uint8(depth), Status: s})
		if p < 0 {
			return dst, true
		}
		idx = p
		if t.status[idx] == statusNone {
			break
		}
	}
	return dst[:n0], false
}

// versionAsOf is versionAt restricted to versions with Seq <= asOf; ok is
// false when the entity has no such version.
func (t *Tree) versionAsOf(idx int32, at, asOf int64) (int32, Status, bool) {
	n := &t.nodes[idx]
	if t.seq[idx] <= asOf {
		if n.from <= at || n.older < 0 {
			return n.parent, t.status[idx], true
		}
		if asOf >= t.version {
			p, s := t.versionAt(idx, at)
			return p, s, true
		}
	}
	// Versions are listed newest ValidFrom first: the first eligible one
	// valid at `at` wins; failing that, the last eligible one (the first
	// version) stands for times before the entity's history.
	var (
		fp    int32
		fs    Status
		found bool
	)
	if t.seq[idx] <= asOf {
		fp, fs, found = n.parent, t.status[idx], true
	}
	for v := n.older; v >= 0; v = t.ovNext[v] {
		if t.ovSeq[v] > asOf {
			continue
		}
		if t.ovFrom[v] <= at {
			return t.ovParent[v], t.ovStatus[v], true
		}
		fp, fs, found = t.ovParent[v], t.ovStatus[v], true
	}
	return fp, fs, found
}

// versionAt returns the parent and status of entity idx at time at.
func (t *Tree) versionAt(idx int32, at int64) (int32, Status) {
	n := &t.nodes[idx]
	if n.from <= at || n.older < 0 {
		return n.parent, t.status[idx]
	}
	v := n.older
	for t.ovFrom[v] > at && t.ovNext[v] >= 0 {
		v = t.ovNext[v]
	}
	return t.ovParent[v], t.ovStatus[v]
}

// Current returns the entity's latest version: its parent (0 = root) and
// status, as canopy.entities holds them.
func (t *Tree) Current(id int64) (parent int64, status Status, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	idx, ok := t.find(id)
	if !ok || t.status[idx] == statusNone {
		return 0, 0, false
	}
	if p := t.nodes[idx].parent; p >= 0 {
		parent = t.nodes[p].id
	}
	return parent, t.status[idx], true
}

// Path returns the ids from the entity's root down to the entity itself in
// the current hierarchy, or nil if the id is unknown or its chain is broken.
func (t *Tree) Path(id int64) []int64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	level := t.level(id)
	if level < 0 {
		return nil
	}
	path := make([]int64, level+1)
	idx, _ := t.find(id)
	for i := level; i >= 0; i-- {
		path[i] = t.nodes[idx].id
		idx = t.nodes[idx].parent
	}
	return path
}

// Level returns the entity's depth in the current hierarchy (a root is 0),
// or -1 if the id is unknown or its chain is broken.
func (t *Tree) Level(id int64) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.level(id)
}

func (t *Tree) level(id int64) int {
	idx, ok := t.find(id)
	if !ok {
		return -1
	}
	for level := 0; level < MaxDepth; level++ {
		if t.status[idx] == statusNone {
			return -1
		}
		if t.nodes[idx].parent < 0 {
			return level
		}
		idx = t.nodes[idx].parent
	}
	return -1
}

// Len returns the number of entities with at least one version.
func (t *Tree) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.n
}

// Version returns the highest Seq applied, 0 for an empty Tree.
func (t *Tree) Version() int64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.version
}

// micros maps a time to Unix microseconds, PostgreSQL's resolution. The zero
// time ("always") maps below every real time.
func micros(ts time.Time) int64 {
	if ts.IsZero() {
		return math.MinInt64
	}
	return ts.UnixMicro()
}

// fibonacci hashing: ids are often dense and sequential, which a
// multiplicative hash spreads across the table's high bits.
const hashMul = 0x9E3779B97F4A7C15

func (t *Tree) slot(id int64) uint64 { return (uint64(id) * hashMul) >> t.shift }

func (t *Tree) find(id int64) (int32, bool) {
	mask := uint64(len(t.slots) - 1)
	for i := t.slot(id); ; i = (i + 1) & mask {
		s := t.slots[i]
		if s == 0 {
			return 0, false
		}
		if t.nodes[s-1].id == id {
			return s - 1, true
		}
	}
}

// intern returns id's index, reserving a slot with no version if it is new.
func (t *Tree) intern(id int64) int32 {
	if idx, ok := t.find(id); ok {
		return idx
	}
	if 2*(len(t.nodes)+1) > len(t.slots) {
		t.rehash(2 * len(t.slots))
	}
	idx := int32(len(t.nodes))
	t.nodes = append(t.nodes, node{id: id, parent: -1, older: -1})
	t.status = append(t.status, statusNone)
	t.seq = append(t.seq, 0)
	t.insertSlot(id, idx)
	return idx
}

func (t *Tree) insertSlot(id int64, idx int32) {
	mask := uint64(len(t.slots) - 1)
	i := t.slot(id)
	for t.slots[i] != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = idx + 1
}

func (t *Tree) rehash(size int) {
	bits := 0
	for 1<<bits < size {
		bits++
	}
	t.slots = make([]int32, 1<<bits)
	t.shift = uint8(64 - bits)
	for idx := range t.nodes {
		t.insertSlot(t.nodes[idx].id, int32(idx))
	}
}
