package idstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Store is the id state of every by-id partition this process owns, in one
// Pebble DB. Its methods are safe for concurrent use; calls for the same
// partition are serialised, calls for different partitions run in parallel.
type Store struct {
	db        *pebble.DB
	lock      *pebble.Lock
	dir       string
	temporary bool // Options.Temporary: emptied on Close

	horizon, seg, keep int64 // milliseconds

	// life is held shared by every operation and exclusively by Close.
	life   sync.RWMutex
	closed bool

	mu    sync.Mutex // guards parts (the map, not the partitions)
	parts map[int32]*part

	scratch sync.Pool // *scratch
}

// part is the in-memory summary of one partition's meta keys.
type part struct {
	mu      sync.Mutex
	thru    int64
	hasThru bool
	segs    []segInfo // ascending seg, every segment holding ids
}

// segInfo summarises a segment: how many occurrences it records and the
// smallest of their offsets. A lookup for an entry skips segments whose
// smallest offset is above the entry's, which keeps replays of old ranges
// from reading every newer segment.
type segInfo struct {
	seg    uint32
	n      int64
	minOff int64
}

// Open opens (creating if needed) the store in dir. The directory is locked
// until Close: opening it again, from this process or another, fails with
// ErrLocked.
func Open(dir string, o Options) (*Store, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("idstate: open %s: %w", dir, err)
	}
	lock, err := pebble.LockDirectory(dir, vfs.Default)
	if err != nil {
		if isLockHeld(err) {
			return nil, fmt.Errorf("%w: %s: %v", ErrLocked, dir, err)
		}
		return nil, fmt.Errorf("idstate: lock %s: %w", dir, err)
	}
	if o.Temporary {
		if err := empty(dir); err != nil {
			lock.Close()
			return nil, err
		}
	}
	// Pebble charges memtables to the block cache; without room for them
	// a large memtable would leave no block cached at all.
	cache := pebble.NewCache(o.CacheBytes + 2*o.MemTableBytes)
	defer cache.Unref() // the DB holds its own reference
	po := &pebble.Options{
		Cache:              cache,
		MemTableSize:       uint64(o.MemTableBytes),
		Lock:               lock,
		Logger:             pebbleLogger{o.Logger},
		FormatMajorVersion: pebble.FormatNewest,
	}
	for i := range po.Levels {
		// Most lookups miss: a bloom filter answers them without reading
		// data blocks.
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("idstate: open %s: %w", dir, err)
	}
	s := &Store{
		db: db, lock: lock, dir: dir, temporary: o.Temporary,
		horizon: o.Horizon.Milliseconds(),
		seg:     o.Segment.Milliseconds(),
		keep:    o.Keep.Milliseconds(),
		parts:   map[int32]*part{},
	}
	s.scratch.New = func() any { return new(scratch) }
	err = s.checkLayout()
	if err == nil {
		err = s.checkFormat()
	}
	if err == nil {
		err = s.load()
	}
	if err != nil {
		db.Close()
		lock.Close()
		return nil, fmt.Errorf("idstate: open %s: %w", dir, err)
	}
	return s, nil
}

// lockFile is the name of the lock file pebble.LockDirectory keeps in a
// store's directory.
const lockFile = "LOCK"

// empty removes everything in dir but its lock file.
func empty(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("idstate: empty %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.Name() == lockFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("idstate: empty %s: %w", dir, err)
		}
	}
	return nil
}

// isLockHeld tells a lock held elsewhere from other failures to lock.
func isLockHeld(err error) bool {
	return errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) ||
		strings.Contains(err.Error(), "lock held")
}

// checkLayout records the segment width in a new directory and checks it
// in an existing one.
func (s *Store) checkLayout() error {
	v, closer, err := s.db.Get(segmentKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return s.db.Set(segmentKey, binary.AppendUvarint(nil, uint64(s.seg)), pebble.Sync)
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	w, err := uvarint(v)
	if err != nil {
		return fmt.Errorf("segment width: %w", err)
	}
	if int64(w) != s.seg {
		return fmt.Errorf("%w: written with %v, opened with %v", ErrLayout,
			time.Duration(w)*time.Millisecond, time.Duration(s.seg)*time.Millisecond)
	}
	return nil
}

// checkFormat drops the ids and marks of a directory written in another
// value format: the state is rebuilt from the log where it stops.
func (s *Store) checkFormat() error {
	v, closer, err := s.db.Get(formatKey)
	switch {
	case err == nil:
		f, ferr := uvarint(v)
		closer.Close()
		if ferr == nil && f == valueFormat {
			return nil
		}
	case !errors.Is(err, pebble.ErrNotFound):
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	for _, prefix := range []byte{prefixID, prefixMeta} {
		if err := b.DeleteRange([]byte{prefix}, []byte{prefix + 1}, nil); err != nil {
			return err
		}
	}
	if err := b.Set(formatKey, binary.AppendUvarint(nil, valueFormat), nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// load reads every partition's meta keys into memory.
func (s *Store) load() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixMeta}, UpperBound: []byte{prefixMeta + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		m, err := parseMetaKey(it.Key())
		if err != nil {
			it.Close()
			return fmt.Errorf("%w: %x", err, it.Key())
		}
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		pt := s.parts[m.part]
		if pt == nil {
			pt = &part{}
			s.parts[m.part] = pt
		}
		if m.kind == metaThru {
			n, err := uvarint(v)
			if err != nil {
				it.Close()
				return fmt.Errorf("meta key %x: %w", it.Key(), err)
			}
			pt.thru, pt.hasThru = int64(n), true
			continue
		}
		si, err := parseSegInfo(m.seg, v)
		if err != nil {
			it.Close()
			return fmt.Errorf("meta key %x: %w", it.Key(), err)
		}
		pt.segs = append(pt.segs, si) // keys are in seg order
	}
	return it.Close()
}

// Close closes the DB and releases the directory. Writes are not fsynced:
// Close flushes nothing beyond what Pebble does on its own, and the state
// survives a clean Close.
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	err := s.db.Close()
	if s.temporary && err == nil {
		err = empty(s.dir) // under the lock still: nobody else has opened it
	}
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("idstate: close %s: %w", s.dir, err)
	}
	return nil
}

// begin takes the shared life lock and the partition's lock (creating the
// partition when create is set); end releases them. pt is nil when the
// partition has no state and create is false.
func (s *Store) begin(p int32, create bool) (pt *part, err error) {
	s.life.RLock()
	if s.closed {
		s.life.RUnlock()
		return nil, ErrClosed
	}
	s.mu.Lock()
	pt = s.parts[p]
	if pt == nil && create {
		pt = &part{}
		s.parts[p] = pt
	}
	s.mu.Unlock()
	if pt != nil {
		pt.mu.Lock()
	}
	return pt, nil
}

func (s *Store) end(pt *part) {
	if pt != nil {
		pt.mu.Unlock()
	}
	s.life.RUnlock()
}

// Through returns the last offset of p reflected in the state; ok is false
// when p has no state (or the store is closed).
func (s *Store) Through(p int32) (offset int64, ok bool) {
	pt, err := s.begin(p, false)
	if err != nil {
		return 0, false
	}
	defer s.end(pt)
	if pt == nil {
		return 0, false
	}
	return pt.thru, pt.hasThru
}

// Oldest returns the start of p's oldest kept segment: ids recorded from
// then on are all known. ok is false when p records no id.
func (s *Store) Oldest(p int32) (time.Time, bool) {
	pt, err := s.begin(p, false)
	if err != nil {
		return time.Time{}, false
	}
	defer s.end(pt)
	if pt == nil || len(pt.segs) == 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(pt.segs[0].seg) * s.seg), true
}

// Reset forgets everything of p, ids and through mark, e.g. when the by-id
// topic was recreated.
func (s *Store) Reset(p int32) error {
	pt, err := s.begin(p, true)
	if err != nil {
		return err
	}
	defer s.end(pt)
	b := s.db.NewBatch()
	defer b.Close()
	for _, prefix := range []byte{prefixID, prefixMeta} {
		start, end := partSpan(prefix, p)
		if err := b.DeleteRange(start, end, nil); err != nil {
			return fmt.Errorf("idstate: reset partition %d: %w", p, err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("idstate: reset partition %d: %w", p, err)
	}
	pt.thru, pt.hasThru, pt.segs = 0, false, nil
	return nil
}

// Expire drops, in every partition, the segments that end at or before
// now - Horizon - Keep, with one range deletion per partition. No record at
// or after now - Keep can be decided by them. It returns how many segments
// were dropped.
func (s *Store) Expire(now time.Time) (dropped int, err error) {
	cutoff := now.UnixMilli() - s.horizon - s.keep
	if cutoff < s.seg {
		return 0, nil
	}
	cut := uint64(cutoff / s.seg) // segments below cut end at or before cutoff
	s.mu.Lock()
	ps := make([]int32, 0, len(s.parts))
	for p := range s.parts {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	slices.Sort(ps)
	for _, p := range ps {
		n, err := s.expire(p, cut)
		dropped += n
		if err != nil {
			return dropped, err
		}
	}
	return dropped, nil
}

// expire drops p's segments below cut.
func (s *Store) expire(p int32, cut uint64) (int, error) {
	pt, err := s.begin(p, false)
	if err != nil {
		return 0, err
	}
	defer s.end(pt)
	if pt == nil {
		return 0, nil
	}
	n := 0
	for n < len(pt.segs) && uint64(pt.segs[n].seg) < cut {
		n++
	}
	if n == 0 {
		return 0, nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	start, end := idSpan(p, 0, cut)
	if err := b.DeleteRange(start, end, nil); err != nil {
		return 0, fmt.Errorf("idstate: expire partition %d: %w", p, err)
	}
	start, end = countSpan(p, 0, cut)
	if err := b.DeleteRange(start, end, nil); err != nil {
		return 0, fmt.Errorf("idstate: expire partition %d: %w", p, err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return 0, fmt.Errorf("idstate: expire partition %d: %w", p, err)
	}
	pt.segs = slices.Delete(pt.segs, 0, n)
	return n, nil
}

// Size returns the occurrences recorded in every kept segment and the
// Pebble disk usage (tables, WAL, manifest). It takes a lock per partition
// and reads Pebble's metrics: cheap enough to call once a minute.
func (s *Store) Size() (ids int64, bytes int64) {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return 0, 0
	}
	s.mu.Lock()
	pts := make([]*part, 0, len(s.parts))
	for _, pt := range s.parts {
		pts = append(pts, pt)
	}
	s.mu.Unlock()
	for _, pt := range pts {
		pt.mu.Lock()
		for _, sc := range pt.segs {
			ids += sc.n
		}
		pt.mu.Unlock()
	}
	return ids, int64(s.db.Metrics().DiskSpaceUsage())
}
