package ingest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// ErrNoInput: a backfill argument names no readable file.
var ErrNoInput = errors.New("no input files")

// InputFile is one file of a backfill: NDJSON or CSV, plain or gzip.
type InputFile struct {
	Path string // absolute
	CSV  bool
	Gzip bool
	Size int64
	// TopicID identifies the file's content (a SHA-256 prefix), so a resumed
	// backfill finds its batches in the ledger and an edited file is a new
	// log.
	TopicID string
	// Label, if set, replaces "file:<path>" as the source name (a spooled
	// query result is named after its query, not its spool file).
	Label string
}

// Source is the file's name in the ledger and in ingest_acks.
func (f InputFile) Source() string {
	if f.Label != "" {
		return f.Label
	}
	return "file:" + f.Path
}

// Name is the file's path.
func (f InputFile) Name() string { return f.Path }

// Total is the file's size in bytes.
func (f InputFile) Total() int64 { return f.Size }

var inputName = regexp.MustCompile(`\.(ndjson|jsonl|json|csv)(\.gz)?$`)

// ExpandInputs resolves files, directories (their *.ndjson, *.jsonl, *.json
// and *.csv files, plain or .gz, sorted) and globs into input files, and
// hashes them. A name that matches nothing is an error.
func ExpandInputs(args []string) ([]InputFile, error) {
	var paths []string
	for _, a := range args {
		matches := []string{a}
		if strings.ContainsAny(a, "*?[") {
			m, err := filepath.Glob(a)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", a, err)
			}
			if len(m) == 0 {
				return nil, fmt.Errorf("%w: %s matches no file", ErrNoInput, a)
			}
			matches = m
		}
		for _, m := range matches {
			st, err := os.Stat(m)
			if err != nil {
				return nil, err
			}
			if !st.IsDir() {
				paths = append(paths, m)
				continue
			}
			entries, err := os.ReadDir(m)
			if err != nil {
				return nil, err
			}
			var found []string
			for _, e := range entries {
				if !e.IsDir() && inputName.MatchString(e.Name()) {
					found = append(found, filepath.Join(m, e.Name()))
				}
			}
			if len(found) == 0 {
				return nil, fmt.Errorf("%w: directory %s holds no .ndjson, .jsonl, .json or .csv file", ErrNoInput, m)
			}
			sort.Strings(found)
			paths = append(paths, found...)
		}
	}
	if len(paths) == 0 {
		return nil, ErrNoInput
	}
	var out []InputFile
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		f, err := OpenInput(abs)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// OpenInput describes one file by its name (.csv or not, .gz or not) and
// hashes its content.
func OpenInput(path string) (InputFile, error) {
	f := InputFile{Path: path}
	name := strings.TrimSuffix(strings.ToLower(path), ".gz")
	f.Gzip = strings.HasSuffix(strings.ToLower(path), ".gz")
	f.CSV = strings.HasSuffix(name, ".csv")
	return f, f.hash()
}

func (f *InputFile) hash() error {
	fh, err := os.Open(f.Path)
	if err != nil {
		return err
	}
	defer func() { _ = fh.Close() }()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return fmt.Errorf("read %s: %w", f.Path, err)
	}
	f.Size = n
	f.TopicID = hex.EncodeToString(h.Sum(nil))[:32]
	return nil
}

// Records reads the file and calls fn for each record, in order: one per
// NDJSON line or CSV row (a CSV row becomes the JSON object of its named
// columns, so it meets exactly the same validation). The offset of a record
// is its line number from 0 (the CSV header is offset 0). read reports the
// bytes of the file consumed so far, for progress.
func (f InputFile) Records(fn func(r Record, read int64) error) error {
	fh, err := os.Open(f.Path)
	if err != nil {
		return err
	}
	defer func() { _ = fh.Close() }()
	counter := &countingReader{r: fh}
	var r io.Reader = counter
	if f.Gzip {
		gz, err := gzip.NewReader(counter)
		if err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		defer func() { _ = gz.Close() }()
		r = gz
	}
	if f.CSV {
		return f.csvRecords(r, counter, fn)
	}
	br := bufio.NewReaderSize(r, 1<<20)
	for offset := int64(0); ; offset++ {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			if len(bytes.TrimSpace(line)) > 0 {
				if ferr := fn(Record{Topic: f.Source(), TopicID: f.TopicID, Offset: offset, Value: line}, counter.n); ferr != nil {
					return ferr
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
	}
}

// CheckHeader reads a CSV file's header and refuses one without the
// required columns, before anything is written.
func (f InputFile) CheckHeader() error {
	if !f.CSV {
		return nil
	}
	err := f.Records(func(Record, int64) error { return errStop })
	if errors.Is(err, errStop) {
		return nil
	}
	return err
}

var errStop = errors.New("stop")

func (f InputFile) csvRecords(r io.Reader, counter *countingReader, fn func(Record, int64) error) error {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: header: %w", f.Path, err)
	}
	cols := append([]string(nil), header...)
	seen := map[string]bool{}
	for i, c := range cols {
		cols[i] = strings.TrimSpace(strings.TrimPrefix(c, "\ufeff"))
		if seen[cols[i]] {
			return fmt.Errorf("%s: column %q appears twice", f.Path, cols[i])
		}
		seen[cols[i]] = true
	}
	for _, need := range []string{"event_id", "entity_id", "occurred_at", "type"} {
		if !seen[need] {
			return fmt.Errorf("%s: the header has no %s column (it has %s)", f.Path, need, strings.Join(cols, ", "))
		}
	}
	for {
		row, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		line, _ := cr.FieldPos(0)
		var value []byte
		if err != nil {
			var pe *csv.ParseError
			if !errors.As(err, &pe) {
				return fmt.Errorf("%s: %w", f.Path, err)
			}
			// A malformed row is a bad record, not a failed backfill: it
			// reaches the dead letters like any other.
			line = pe.Line
			value = []byte(fmt.Sprintf("csv line %d: %v", pe.Line, pe.Err))
		} else {
			value = RowJSON(cols, row)
		}
		if ferr := fn(Record{Topic: f.Source(), TopicID: f.TopicID, Offset: int64(line - 1), Value: value}, counter.n); ferr != nil {
			return ferr
		}
	}
}

var integer = regexp.MustCompile(`^-?[0-9]+$`)

// RowJSON renders a CSV row as a JSON object. entity_id and integers in
// other columns stay JSON numbers; everything else is a string, which the
// decoder parses as it would in JSON (decimals are accepted as strings). An
// empty cell is left out, so a missing required field is missing_field.
func RowJSON(cols, row []string) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	first := true
	for i, c := range cols {
		if i >= len(row) || row[i] == "" {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		k, _ := json.Marshal(c)
		b.Write(k)
		b.WriteByte(':')
		v := row[i]
		if c != "event_id" && c != "type" && c != "occurred_at" && integer.MatchString(v) {
			b.WriteString(v)
			continue
		}
		s, _ := json.Marshal(v)
		b.Write(s)
	}
	b.WriteByte('}')
	return b.Bytes()
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
