// Package hierarchy is the system of record for Canopy's entity hierarchy:
// the PostgreSQL store (schema canopy, whose triggers record history and the
// outbox), the bulk importer, and the in-memory versioned Tree that the ingest
// worker uses to expand each event across its ancestors as they were at the
// event's time.
//
// It imports schema and internal/ only; it must not import ingest, restate
// or cmd/ (the event path depends on it, never the reverse).
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

	// Per entity, by index. status is kept apart so that node packs into 32
	// bytes, half a cache line: a chain walk touches one line of nodes per
	// link, and status (a byte per entity) stays in cache far longer.
	nodes  []node
	status []Status // latest version's status; statusNone = no version yet

	// Overflow versions, linked newest first by ValidFrom.
	ovParent []int32
	ovStatus []Status
	ovFrom   []int64
	ovNext   []int32
	ovSeq    []int64
	// ovDead maps an overflow version superseded by a back-dated change to
	// that change's Seq: from then on the version never was.
	ovDead map[int32]int64

	// The current structure as child lists (first child, next sibling), for
	// walking a subtree down.
	child   []int32
	sibling []int32
	// formerChildren maps a parent to the entities that had it as their
	// current parent once and left: with child, it reaches every entity that
	// was ever below a given one.
	formerChildren map[int32][]int32

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
	seq    int64 // Seq, for lookups as of an older version of the tree
	parent int32 // index; -1 = root
	older  int32 // head of the overflow list; -1 = none
}

// NewTree returns an empty Tree.
func NewTree() *Tree {
	t := &Tree{ovDead: map[int32]int64{}, formerChildren: map[int32][]int32{}}
	t.rehash(1 << 10)
	return t
}

// Errors returned by Tree.Apply.
var (
	errBadID     = errors.New("hierarchy: entity id must be positive")
	errBadParent = errors.New("hierarchy: parent id must be 0 (root) or a positive id other than the entity's own")
)

// Apply adds the version c. Usually c starts at or after the entity's latest
// version and becomes the latest; among versions with equal ValidFrom the one
// applied last wins. A back-dated change (ValidFrom before the entity's
// latest version) corrects the history, as the PostgreSQL trigger does: the
// versions starting at or after c.ValidFrom are superseded (for lookups as
// of c.Seq or later; older lookups still see them) and c is the latest
// version from its ValidFrom on. A change whose Seq is not above Version has
// been applied already and is ignored, which makes replaying a change feed
// idempotent.
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
	n := &t.nodes[idx]
	switch {
	case t.status[idx] == statusNone:
		n.parent, t.status[idx], n.from, n.seq = p, c.Status, from, c.Seq
		t.link(idx, p)
		t.n++
	default:
		old := n.parent
		back := from < n.from
		n.older = t.pushOverflow(n.parent, t.status[idx], n.from, n.seq, n.older)
		if back {
			// Supersede every live version starting at or after from. The
			// list is newest first, so they form its live head.
			for v := n.older; v >= 0 && t.ovFrom[v] >= from; v = t.ovNext[v] {
				if _, dead := t.ovDead[v]; !dead {
					t.ovDead[v] = c.Seq
				}
			}
		}
		n.parent, t.status[idx], n.from, n.seq = p, c.Status, from, c.Seq
		if old != p {
			t.unlink(idx, old)
			t.link(idx, p)
			if old >= 0 {
				t.formerChildren[old] = append(t.formerChildren[old], idx)
			}
		}
	}
	t.version = c.Seq
	return nil
}

// link makes idx the first child of p (-1 = root: nothing to link).
func (t *Tree) link(idx, p int32) {
	if p < 0 {
		return
	}
	t.sibling[idx] = t.child[p]
	t.child[p] = idx
}

// unlink removes idx from p's children, O(siblings).
func (t *Tree) unlink(idx, p int32) {
	if p < 0 {
		return
	}
	if t.child[p] == idx {
		t.child[p] = t.sibling[idx]
	} else {
		for c := t.child[p]; c >= 0; c = t.sibling[c] {
			if t.sibling[c] == idx {
				t.sibling[c] = t.sibling[idx]
				break
			}
		}
	}
	t.sibling[idx] = -1
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
	dst, ok, _ := t.AncestorsAsOfLatest(id, at, asOf, dst)
	return dst, ok
}

// AncestorsAsOfLatest is AncestorsAsOf that also reports, as latest, that
// every link of the chain is its entity's latest version as of asOf. The
// chain is then also the one at any time after every ValidFrom (the
// hierarchy as it is at asOf), and a caller that needs both need not walk
// twice.
func (t *Tree) AncestorsAsOfLatest(id int64, at time.Time, asOf int64, dst []Ancestor) (_ []Ancestor, ok, latest bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.ancestorsAsOfLatest(id, at, asOf, dst)
}

// ancestorsAsOfLatest is AncestorsAsOfLatest with t read-locked.
func (t *Tree) ancestorsAsOfLatest(id int64, at time.Time, asOf int64, dst []Ancestor) (_ []Ancestor, ok, latest bool) {
	idx, ok := t.find(id)
	if !ok || t.status[idx] == statusNone {
		return dst, false, false
	}
	n0 := len(dst)
	atm := micros(at)
	latest = true
	for depth := 0; depth < MaxDepth; depth++ {
		p, s, ok, last := t.versionAsOf(idx, atm, asOf)
		if !ok {
			break
		}
		latest = latest && last
		dst = append(dst, Ancestor{ID: t.nodes[idx].id, Depth: uint8(depth), Status: s})
		if p < 0 {
			return dst, true, latest
		}
		idx = p
		if t.status[idx] == statusNone {
			break
		}
	}
	return dst[:n0], false, false
}

// Held is a Tree read-locked by Hold: its look-ups take no lock each, for
// a caller making many in a row (the processor, a chunk of a batch at a
// time). Taking the read lock is an atomic add on a word that every core
// resolving chains shares: per look-up, a sizeable part of its cost.
type Held struct{ t *Tree }

// Hold read-locks t until release is called and returns it as Held.
// Changes wait meanwhile, so hold it briefly; and until release the holder
// must reach t only through Held: a second read lock waits behind a
// waiting change, which waits for the first (deadlock).
func (t *Tree) Hold() (h Held, release func()) {
	t.mu.RLock()
	return Held{t}, t.mu.RUnlock
}

// AncestorsAsOfLatest is Tree.AncestorsAsOfLatest.
func (h Held) AncestorsAsOfLatest(id int64, at time.Time, asOf int64, dst []Ancestor) (_ []Ancestor, ok, latest bool) {
	return h.t.ancestorsAsOfLatest(id, at, asOf, dst)
}

// Version is Tree.Version.
func (h Held) Version() int64 { return h.t.version }

// Warm reads ahead what looking up ids will read first: each id's hash
// slot, its node and status, and its parent's. Looking one id up waits on
// those memory reads one after the other (the slot gives the node, the node
// the parent), a cache miss each in a tree of a million entities. Warm's
// reads of different ids do not depend on each other, so the processor
// overlaps them, and the look-ups that follow find them in cache: about
// half the time per id for chunks of a few hundred ids
// (BenchmarkTreeAncestorsHeld). It changes nothing and may be skipped.
func (h Held) Warm(ids []int64) {
	if len(h.t.nodes) > 0 {
		h.t.warm(ids)
	}
}

// warm is Warm's loop; the sum keeps its reads from being optimised away.
//
//go:noinline
func (t *Tree) warm(ids []int64) (sum int64) {
	for _, id := range ids {
		i := max(t.slots[t.slot(id)]-1, 0) // the first probe: the id's slot, mostly
		p := max(t.nodes[i].parent, 0)
		sum += t.nodes[p].id + int64(t.status[i]) + int64(t.status[p])
	}
	return sum
}

// versionAsOf is versionAt restricted to versions with Seq <= asOf; ok is
// false when the entity has no such version. latest reports that the
// version is the entity's latest one as of asOf, the one it gives for any
// time after every ValidFrom.
func (t *Tree) versionAsOf(idx int32, at, asOf int64) (_ int32, _ Status, ok, latest bool) {
	n := &t.nodes[idx]
	if n.seq <= asOf {
		if n.from <= at || n.older < 0 {
			return n.parent, t.status[idx], true, true
		}
		if asOf >= t.version && len(t.ovDead) == 0 {
			p, s := t.versionAt(idx, at)
			return p, s, true, false
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
	if n.seq <= asOf {
		fp, fs, found = n.parent, t.status[idx], true
	}
	for v := n.older; v >= 0; v = t.ovNext[v] {
		if t.ovSeq[v] > asOf {
			continue
		}
		if len(t.ovDead) > 0 {
			if d, dead := t.ovDead[v]; dead && d <= asOf {
				continue
			}
		}
		if t.ovFrom[v] <= at {
			return t.ovParent[v], t.ovStatus[v], true, false
		}
		fp, fs, found = t.ovParent[v], t.ovStatus[v], true
	}
	return fp, fs, found, false
}

// versionAt returns the parent and status of entity idx at time at.
func (t *Tree) versionAt(idx int32, at int64) (int32, Status) {
	n := &t.nodes[idx]
	if n.from <= at || n.older < 0 {
		return n.parent, t.status[idx]
	}
	if len(t.ovDead) > 0 {
		p, s, _, _ := t.versionAsOf(idx, at, math.MaxInt64-1)
		return p, s
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
	t.child = append(t.child, -1)
	t.sibling = append(t.sibling, -1)
	t.status = append(t.status, statusNone)
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

// Subtree returns id and every entity below it in the current hierarchy,
// parents before children; nil if id is unknown.
func (t *Tree) Subtree(id int64) []int64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	idx, ok := t.find(id)
	if !ok || t.status[idx] == statusNone {
		return nil
	}
	return t.walkDown(idx, false)
}

// Related returns id and every entity that is or ever was below it in any
// version of the history (a superset of those whose as-was chains pass
// through id at some time), parents before children; nil if id is unknown.
func (t *Tree) Related(id int64) []int64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	idx, ok := t.find(id)
	if !ok || t.status[idx] == statusNone {
		return nil
	}
	return t.walkDown(idx, true)
}

func (t *Tree) walkDown(root int32, former bool) []int64 {
	var (
		out   []int64
		queue = []int32{root}
		seen  map[int32]bool
	)
	if former {
		seen = map[int32]bool{root: true}
	}
	for len(queue) > 0 {
		idx := queue[0]
		queue = queue[1:]
		out = append(out, t.nodes[idx].id)
		for c := t.child[idx]; c >= 0; c = t.sibling[c] {
			if former {
				if seen[c] {
					continue
				}
				seen[c] = true
			}
			queue = append(queue, c)
		}
		if former {
			for _, c := range t.formerChildren[idx] {
				if !seen[c] {
					seen[c] = true
					queue = append(queue, c)
				}
			}
		}
		if len(out) > len(t.nodes) {
			break // a cycle in bad data
		}
	}
	return out
}
