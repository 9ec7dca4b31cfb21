package idstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// base is a day boundary, so segments start on it.
var base = time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)

func openT(t testing.TB, dir string, o Options) *Store {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// claimAll feeds log to s in the given batches and returns the answers.
func claimAll(t testing.TB, s *Store, p int32, log []Entry, splits [][2]int) []bool {
	t.Helper()
	var got []bool
	for _, sp := range splits {
		owned, err := s.Claim(p, log[sp[0]:sp[1]])
		if err != nil {
			t.Fatal(err)
		}
		if len(owned) != sp[1]-sp[0] {
			t.Fatalf("batch %v: %d answers", sp, len(owned))
		}
		got = append(got, owned...)
	}
	return got
}

func diff(t testing.TB, what string, log []Entry, got, want []bool) {
	t.Helper()
	for i := range want {
		if got[i] != want[i] {
			e := log[i]
			t.Fatalf("%s: entry %d (id %q offset %d time %d retryOf %d): owned=%v, want %v",
				what, i, e.ID[:2], e.Offset, e.Time.UnixMilli(), e.RetryOf, got[i], want[i])
		}
	}
}

var ruleCases = []struct {
	name string
	opts Options
	back bool
}{
	{name: "horizon 1h default segment", opts: Options{Horizon: time.Hour}},
	{name: "horizon 90m over 1h segments", opts: Options{Horizon: 90 * time.Minute}},
	{name: "segment wider than horizon", opts: Options{Horizon: 20 * time.Minute, Segment: 2 * time.Hour}},
	{name: "horizon 24h", opts: Options{Horizon: 24 * time.Hour}},
	{name: "odd horizon, 1s segments", opts: Options{Horizon: 7*time.Second + 3*time.Millisecond, Segment: time.Second}},
	{name: "clock steps back", opts: Options{Horizon: time.Hour}, back: true},
}

// TestClaimMatchesOracle drives the Store and the oracle with random logs
// in random batch splits, then replays sub-ranges and rebuilds.
func TestClaimMatchesOracle(t *testing.T) {
	for ci, tc := range ruleCases {
		t.Run(tc.name, func(t *testing.T) {
			for seed := range uint64(4) {
				r := rand.New(rand.NewPCG(seed, uint64(ci)))
				log, want := randomLog(r, logSpec{n: 3000, ids: 12, horizon: tc.opts.Horizon, back: tc.back}, base.Add(-time.Duration(r.IntN(3600))*time.Second))
				s := openT(t, t.TempDir(), tc.opts)
				const p = 3
				diff(t, "first pass", log, claimAll(t, s, p, log, randomSplits(r, len(log), 200)), want)
				if thru, ok := s.Through(p); !ok || thru != log[len(log)-1].Offset {
					t.Fatalf("Through = %d, %v; want %d", thru, ok, log[len(log)-1].Offset)
				}
				ids, _ := s.Size()

				// Replay earlier sub-ranges: same answers, nothing new recorded.
				for range 10 {
					a := r.IntN(len(log))
					b := a + 1 + r.IntN(len(log)-a)
					diff(t, fmt.Sprintf("replay [%d,%d)", a, b), log[a:b], claimAll(t, s, p, log[a:b], randomSplits(r, b-a, 300)), want[a:b])
				}
				if again, _ := s.Size(); again != ids {
					t.Fatalf("replays changed the id count: %d -> %d", ids, again)
				}
				if thru, _ := s.Through(p); thru != log[len(log)-1].Offset {
					t.Fatalf("replay moved Through back to %d", thru)
				}

				// Rebuild: a fresh store fed the log in other batches agrees,
				// including on what comes after.
				s2 := openT(t, t.TempDir(), tc.opts)
				cut := len(log) * 2 / 3
				diff(t, "rebuild", log[:cut], claimAll(t, s2, p, log[:cut], randomSplits(r, cut, 1000)), want[:cut])
				diff(t, "after rebuild", log[cut:], claimAll(t, s2, p, log[cut:], randomSplits(r, len(log)-cut, 50)), want[cut:])
				if ids2, _ := s2.Size(); ids2 != ids {
					t.Fatalf("rebuild recorded %d ids, first pass %d", ids2, ids)
				}
				s.Close()
				s2.Close()
			}
		})
	}
}

// TestClaimRule pins the rule on hand-made cases.
func TestClaimRule(t *testing.T) {
	h := time.Hour
	at := func(d time.Duration) time.Time { return base.Add(d) }
	e := func(id string, off int64, d time.Duration, retryOf int64) Entry {
		return Entry{ID: []byte(id), Offset: off, Time: at(d), RetryOf: retryOf}
	}
	rel := func(id string, off int64, d time.Duration, of int64) Entry {
		return Entry{ID: []byte(id), Offset: off, Time: at(d), RetryOf: of, Release: true}
	}
	cases := []struct {
		name string
		log  []Entry
		want []bool
	}{
		{"first occurrence owns", []Entry{e("a", 0, 0, -1)}, []bool{true}},
		{"duplicate within horizon", []Entry{e("a", 0, 0, -1), e("a", 1, h, -1)}, []bool{true, false}},
		{"just past horizon owns again", []Entry{e("a", 0, 0, -1), e("a", 1, h+time.Millisecond, -1), e("a", 2, h+2*time.Millisecond, -1)}, []bool{true, true, false}},
		{"horizon measured from the accepted occurrence", []Entry{e("a", 0, 0, -1), e("a", 1, h/2, -1), e("a", 2, h+h/4, -1)}, []bool{true, false, true}},
		{"retry of the owner owns once", []Entry{e("a", 0, 0, -1), e("a", 1, 1, 0), e("a", 2, 2, 0), e("a", 3, 3, -1)}, []bool{true, true, false, false}},
		{"retry of the retry owns", []Entry{e("a", 0, 0, -1), e("a", 1, 1, 0), e("a", 2, 2, 1), e("a", 3, 3, 0)}, []bool{true, true, true, false}},
		{"retry of a duplicate does not", []Entry{e("a", 0, 0, -1), e("a", 1, 1, -1), e("a", 2, 2, 1)}, []bool{true, false, false}},
		{"retry past horizon is a new owner", []Entry{e("a", 0, 0, -1), e("a", 5, 2*h, 0), e("a", 6, 2*h, -1)}, []bool{true, true, false}},
		{"ids are independent", []Entry{e("a", 0, 0, -1), e("b", 1, 0, -1), e("ab", 2, 0, -1)}, []bool{true, true, true}},
		{"a release frees the id for later records only", []Entry{e("a", 0, 0, -1), e("a", 1, 1, -1), rel("a", 2, 2, 0), e("a", 3, 3, -1), e("a", 4, 4, -1)},
			[]bool{true, false, true, true, false}},
		{"a release of the retried owner frees nothing", []Entry{e("a", 0, 0, -1), e("a", 1, 1, 0), rel("a", 2, 2, 0), e("a", 3, 3, -1)},
			[]bool{true, true, false, false}},
		{"a release of the retry frees", []Entry{e("a", 0, 0, -1), e("a", 1, 1, 0), rel("a", 2, 2, 1), rel("a", 3, 3, 1), e("a", 4, 4, 0), e("a", 5, 5, -1)},
			[]bool{true, true, true, false, true, false}},
		{"a release of nothing is nothing", []Entry{rel("a", 0, 0, 7), e("a", 1, 1, -1)}, []bool{false, true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openT(t, t.TempDir(), Options{Horizon: h})
			defer s.Close()
			got, err := s.Claim(0, tc.log)
			if err != nil {
				t.Fatal(err)
			}
			diff(t, "one batch", tc.log, got, tc.want)
			s2 := openT(t, t.TempDir(), Options{Horizon: h})
			defer s2.Close()
			diff(t, "one per batch", tc.log, claimAll(t, s2, 0, tc.log, randomSplits(rand.New(rand.NewPCG(1, 1)), len(tc.log), 1)), tc.want)
		})
	}
}

func TestClaimInvalid(t *testing.T) {
	s := openT(t, t.TempDir(), Options{Horizon: time.Hour})
	defer s.Close()
	ok := Entry{ID: []byte("x"), Offset: 5, Time: base, RetryOf: -1}
	cases := []struct {
		name    string
		entries []Entry
	}{
		{"empty id", []Entry{{Offset: 1, Time: base, RetryOf: -1}}},
		{"long id", []Entry{{ID: make([]byte, MaxIDLen+1), Offset: 1, Time: base, RetryOf: -1}}},
		{"offsets repeat", []Entry{ok, ok}},
		{"offsets go back", []Entry{ok, {ID: []byte("y"), Offset: 4, Time: base, RetryOf: -1}}},
		{"negative offset", []Entry{{ID: []byte("x"), Offset: -1, Time: base, RetryOf: -1}}},
		{"zero time", []Entry{{ID: []byte("x"), Offset: 1, RetryOf: -1}}},
		{"bad RetryOf", []Entry{{ID: []byte("x"), Offset: 1, Time: base, RetryOf: -2}}},
		{"release of nothing", []Entry{{ID: []byte("x"), Offset: 1, Time: base, RetryOf: -1, Release: true}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Claim(1, tc.entries); !errors.Is(err, ErrInvalidEntry) {
				t.Fatalf("err = %v, want ErrInvalidEntry", err)
			}
		})
	}
	if _, ok := s.Through(1); ok {
		t.Fatal("a rejected batch left a through mark")
	}
}

// TestReopen checks that state and marks survive Close, and that the
// directory is locked while open.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	o := Options{Horizon: time.Hour}
	r := rand.New(rand.NewPCG(7, 7))
	log, want := randomLog(r, logSpec{n: 2000, ids: 10, horizon: o.Horizon}, base)
	s := openT(t, dir, o)
	half := len(log) / 2
	diff(t, "before close", log[:half], claimAll(t, s, 9, log[:half], randomSplits(r, half, 100)), want[:half])
	if _, err := s.Claim(-4, log[:10]); err != nil { // a second partition, negative on purpose
		t.Fatal(err)
	}

	_, err := Open(dir, o)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second Open: err = %v, want ErrLocked naming %s", err, dir)
	}
	ids, _ := s.Size()
	oldest, _ := s.Oldest(9)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Claim(9, log[half:]); !errors.Is(err, ErrClosed) {
		t.Fatalf("Claim after Close: %v", err)
	}

	if _, err := Open(dir, Options{Horizon: o.Horizon, Segment: 2 * time.Hour}); !errors.Is(err, ErrLayout) {
		t.Fatalf("Open with another Segment: err = %v, want ErrLayout", err)
	}
	s = openT(t, dir, o)
	defer s.Close()
	if thru, ok := s.Through(9); !ok || thru != log[half-1].Offset {
		t.Fatalf("Through after reopen = %d, %v; want %d", thru, ok, log[half-1].Offset)
	}
	if thru, ok := s.Through(-4); !ok || thru != log[9].Offset {
		t.Fatalf("Through(-4) after reopen = %d, %v", thru, ok)
	}
	if got, _ := s.Size(); got != ids {
		t.Fatalf("Size after reopen = %d ids, want %d", got, ids)
	}
	if got, _ := s.Oldest(9); !got.Equal(oldest) {
		t.Fatalf("Oldest after reopen = %v, want %v", got, oldest)
	}
	diff(t, "after reopen", log[half:], claimAll(t, s, 9, log[half:], randomSplits(r, len(log)-half, 100)), want[half:])
}

func TestReset(t *testing.T) {
	s := openT(t, t.TempDir(), Options{Horizon: time.Hour})
	defer s.Close()
	e := []Entry{{ID: []byte("a"), Offset: 10, Time: base, RetryOf: -1}}
	for _, p := range []int32{1, 2} {
		if _, err := s.Claim(p, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Reset(1); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Through(1); ok {
		t.Fatal("Through after Reset")
	}
	if _, ok := s.Oldest(1); ok {
		t.Fatal("Oldest after Reset")
	}
	if ids, _ := s.Size(); ids != 1 {
		t.Fatalf("Size after Reset = %d, want 1 (partition 2)", ids)
	}
	// Partition 1 forgot "a" at offset 10; partition 2 did not.
	e2 := []Entry{{ID: []byte("a"), Offset: 11, Time: base, RetryOf: -1}}
	for p, want := range map[int32]bool{1: true, 2: false} {
		got, err := s.Claim(p, e2)
		if err != nil {
			t.Fatal(err)
		}
		if got[0] != want {
			t.Fatalf("partition %d: owned = %v, want %v", p, got[0], want)
		}
	}
}

// TestExpire checks that Expire drops old segments and changes no answer
// for records at or after now-Keep.
func TestExpire(t *testing.T) {
	o := Options{Horizon: time.Hour, Keep: 2 * time.Hour} // 1h segments
	r := rand.New(rand.NewPCG(3, 3))
	// Ids seen only in the first hour, then a random log.
	var log []Entry
	for i := range 50 {
		log = append(log, Entry{ID: fmt.Appendf(nil, "old-%d", i), Offset: int64(i), Time: base.Add(time.Duration(i) * time.Minute), RetryOf: -1})
	}
	rest, _ := randomLog(r, logSpec{n: 4000, ids: 40, horizon: o.Horizon}, base.Add(time.Hour))
	for _, e := range rest {
		e.Offset += 100
		if e.RetryOf >= 0 {
			e.RetryOf += 100
		}
		log = append(log, e)
	}
	last := log[len(log)-1].Time
	if span := last.Sub(log[0].Time); span < 8*time.Hour {
		t.Fatalf("log spans only %v", span)
	}
	expired, kept := openT(t, t.TempDir(), o), openT(t, t.TempDir(), o)
	defer expired.Close()
	defer kept.Close()
	for _, s := range []*Store{expired, kept} {
		claimAll(t, s, 0, log, randomSplits(r, len(log), 500))
	}
	now := last.Add(30 * time.Minute)
	before, _ := expired.Size()
	dropped, err := expired.Expire(now)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := expired.Size()
	cutoff := now.Add(-o.Horizon - o.Keep)
	if dropped == 0 || after >= before {
		t.Fatalf("Expire dropped %d segments, ids %d -> %d", dropped, before, after)
	}
	if oldest, _ := expired.Oldest(0); oldest.After(cutoff) || oldest.Add(time.Hour).Before(cutoff) {
		t.Fatalf("Oldest = %v, cutoff %v: want the segment holding the cutoff", oldest, cutoff)
	}
	if again, _ := expired.Expire(now); again != 0 {
		t.Fatalf("second Expire dropped %d", again)
	}

	// The old ids are forgotten: a probe at their own time is a duplicate
	// in the full store and a new owner in the expired one.
	next := log[len(log)-1].Offset + 1
	probe := func(s *Store, e Entry) bool {
		t.Helper()
		got, err := s.Claim(0, []Entry{e})
		if err != nil {
			t.Fatal(err)
		}
		return got[0]
	}
	for _, e := range log[:50] {
		p := Entry{ID: e.ID, Offset: next, Time: e.Time, RetryOf: -1}
		next++
		if probe(kept, p) || !probe(expired, p) {
			t.Fatalf("%s: want a duplicate before expiry and a new owner after", e.ID)
		}
	}
	// The probes recorded the old ids again in the expired store only;
	// drop them so both stores hold the same kept segments.
	if _, err := expired.Expire(now); err != nil {
		t.Fatal(err)
	}

	// Records at or after now-Keep get the same answers.
	dups := 0
	for i := range 2000 {
		e := log[r.IntN(len(log))]
		p := Entry{ID: e.ID, Offset: next, Time: now.Add(-o.Keep + time.Duration(r.Int64N(int64(o.Keep)))), RetryOf: -1}
		if i%5 == 0 {
			p.RetryOf = e.Offset
		}
		if i%7 == 0 {
			p.Time = now.Add(-o.Keep) // looks back exactly to the cutoff
		}
		next++
		a, b := probe(expired, p), probe(kept, p)
		if a != b {
			t.Fatalf("probe %d (%v): expired store says %v, full store %v", i, p.Time, a, b)
		}
		if !a {
			dups++
		}
	}
	if dups < 100 {
		t.Fatalf("only %d probes were duplicates", dups)
	}
}

// TestConcurrentPartitions claims several partitions in parallel while Size
// and Expire run, each partition checked against its own oracle.
func TestConcurrentPartitions(t *testing.T) {
	s := openT(t, t.TempDir(), Options{Horizon: time.Hour})
	defer s.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for p := range int32(4) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(p), 11))
			log, want := randomLog(r, logSpec{n: 1500, ids: 8, horizon: time.Hour}, base)
			for _, sp := range randomSplits(r, len(log), 100) {
				got, err := s.Claim(p, log[sp[0]:sp[1]])
				if err != nil {
					errs <- err
					return
				}
				for i, g := range got {
					if g != want[sp[0]+i] {
						errs <- fmt.Errorf("partition %d entry %d: owned=%v", p, sp[0]+i, g)
						return
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			default:
				s.Size()
				s.Expire(base) // nothing is that old: must not change answers
			}
		}
	}()
	wg.Wait()
	close(done)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestClaimAnyOrder claims random sub-ranges of a log in random order, as
// a store rebuilt from the middle of a log or replaying after a Reset
// would, and compares with the oracle fed the same calls. The rule holds
// for any state, not only one built from a prefix of the log.
func TestClaimAnyOrder(t *testing.T) {
	for ci, tc := range ruleCases {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(42, uint64(ci)))
			log, _ := randomLog(r, logSpec{n: 1500, ids: 6, horizon: tc.opts.Horizon, back: tc.back}, base)
			s := openT(t, t.TempDir(), tc.opts)
			defer s.Close()
			o := newOracle(tc.opts.Horizon)
			for range 60 {
				a := r.IntN(len(log))
				b := a + 1 + r.IntN(min(100, len(log)-a))
				want := make([]bool, 0, b-a)
				for _, e := range log[a:b] {
					want = append(want, o.decide(e))
				}
				got, err := s.Claim(0, log[a:b])
				if err != nil {
					t.Fatal(err)
				}
				diff(t, fmt.Sprintf("range [%d,%d)", a, b), log[a:b], got, want)
			}
		})
	}
}

// TestOtherFormatDropped opens a directory written in another value format:
// its ids and marks are dropped, so the partition is rebuilt from the log
// rather than read in a format this code would misread.
func TestOtherFormatDropped(t *testing.T) {
	dir := t.TempDir()
	o := Options{Horizon: time.Hour}
	r := rand.New(rand.NewPCG(9, 9))
	log, want := leaveState(t, dir, o, r, 1, func(s *Store) {
		if err := s.db.Set(formatKey, binary.AppendUvarint(nil, valueFormat-1), nil); err != nil {
			t.Fatal(err)
		}
	})

	s := openT(t, dir, o)
	defer s.Close()
	if _, ok := s.Through(1); ok {
		t.Fatal("Through survived a format change; the partition would not be rebuilt")
	}
	if ids, _ := s.Size(); ids != 0 {
		t.Fatalf("Size after a format change = %d ids, want 0", ids)
	}
	diff(t, "rebuilt", log, claimAll(t, s, 1, log, randomSplits(r, len(log), 50)), want)
}

// leaveState claims a random log of 500 entries in partition p of a store
// opened in dir with o, runs before (if any) on it and closes it: the state
// a later Open of dir finds. It returns the log and its oracle's answers.
func leaveState(t *testing.T, dir string, o Options, r *rand.Rand, p int32, before func(*Store)) ([]Entry, []bool) {
	t.Helper()
	log, want := randomLog(r, logSpec{n: 500, ids: 20, horizon: o.Horizon}, base)
	s := openT(t, dir, o)
	diff(t, "first run", log, claimAll(t, s, p, log, [][2]int{{0, len(log)}}), want)
	if before != nil {
		before(s)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return log, want
}

// TestTemporary checks that a Temporary store never reads what its
// directory holds (the state of a process killed before its Close emptied
// it), and that it leaves nothing but its lock file once closed.
func TestTemporary(t *testing.T) {
	dir := t.TempDir()
	o := Options{Horizon: time.Hour}
	r := rand.New(rand.NewPCG(3, 3))
	// What a killed run leaves: state that was never emptied, and a stray
	// file.
	log, want := leaveState(t, dir, o, r, 2, nil)
	if err := os.WriteFile(filepath.Join(dir, "stray"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	o.Temporary = true
	s := openT(t, dir, o)
	if ids, _ := s.Size(); ids != 0 {
		t.Fatalf("a temporary store opened over an old state holds %d ids, want 0", ids)
	}
	if _, ok := s.Through(2); ok {
		t.Fatal("a temporary store opened over an old state knows partition 2")
	}
	// Every id is new to it again: the same answers as the first run.
	diff(t, "temporary run", log, claimAll(t, s, 2, log, [][2]int{{0, len(log)}}), want)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].Name() != lockFile {
		names := make([]string, len(left))
		for i, e := range left {
			names[i] = e.Name()
		}
		t.Fatalf("after a temporary store's Close the directory holds %v, want only %s", names, lockFile)
	}
	// An ordinary store opens there afresh.
	o.Temporary = false
	s = openT(t, dir, o)
	defer s.Close()
	if ids, _ := s.Size(); ids != 0 {
		t.Fatalf("after a temporary store, %d ids", ids)
	}
}
