package hierarchy

import (
	"bufio"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
)

// SynthEntity is one row of a synthetic hierarchy, as an import file holds it.
type SynthEntity struct {
	ID, ParentID int64 // ParentID 0 = root
	Status       Status
	Name         string
}

// synthRoots is how many top-level hierarchies Synthesize grows.
const synthRoots = 7

// synthDepthWeights[d-1] is the relative share of non-root entities placed
// at depth d. Tuned so the mean chain (entity + ancestors) is about 7 long,
// with a thin tail down to depth 15 like real partner and reseller networks.
var synthDepthWeights = [...]float64{2, 5, 9, 13, 16, 15, 13, 10, 7, 4, 2.5, 1.5, 0.8, 0.5, 0.3}

// synthKinds names entities by depth, for readable dashboards.
var synthKinds = [...]string{"Group", "Region", "Country", "Partner", "Branch", "Team", "Affiliate", "Reseller", "Agent"}

// Synthesize returns a deterministic forest of n entities for demos and
// benchmarks: ids 1..n, every parent's id smaller than its children's, about
// seven hierarchies, a mean chain length of about 7 with depth up to 15,
// skewed fan-out (a few very large teams, many small ones), about 3%
// suspended and 0.5% closed. The same n and seed give the same forest.
func Synthesize(n int, seed int64) []SynthEntity {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x63616e6f7079))
	var cum [len(synthDepthWeights)]float64
	total := 0.0
	for i, w := range synthDepthWeights {
		total += w
		cum[i] = total
	}
	byDepth := make([][]int64, len(synthDepthWeights)+1)
	out := make([]SynthEntity, n)
	for i := range out {
		id := int64(i + 1)
		e := SynthEntity{ID: id}
		depth := 0
		if i >= synthRoots {
			u := rng.Float64() * total
			depth = 1
			for depth < len(cum) && cum[depth-1] < u {
				depth++
			}
			for len(byDepth[depth-1]) == 0 {
				depth--
			}
			// Early members of a level are the big teams: u^3 piles
			// children onto them while most members get a few or none.
			level := byDepth[depth-1]
			e.ParentID = level[int(float64(len(level))*math.Pow(rng.Float64(), 3))]
		}
		byDepth[depth] = append(byDepth[depth], id)
		switch r := rng.IntN(1000); {
		case r < 30:
			e.Status = StatusSuspended
		case r < 35 && i >= synthRoots:
			e.Status = StatusClosed
		}
		e.Name = synthKinds[min(depth, len(synthKinds)-1)] + " " + strconv.FormatInt(id, 10)
		out[i] = e
	}
	return out
}

// WriteCSV writes entities in the import format, with a header row:
// id,parent_id,status,name (empty parent_id = root).
func WriteCSV(w io.Writer, entities []SynthEntity) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.WriteString("id,parent_id,status,name\n")
	var buf []byte
	for _, e := range entities {
		buf = strconv.AppendInt(buf[:0], e.ID, 10)
		buf = append(buf, ',')
		if e.ParentID != 0 {
			buf = strconv.AppendInt(buf, e.ParentID, 10)
		}
		buf = append(buf, ',')
		buf = append(buf, e.Status.String()...)
		buf = append(buf, ',')
		buf = appendCSVField(buf, e.Name)
		buf = append(buf, '\n')
		if _, err := bw.Write(buf); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// appendCSVField quotes s only when RFC 4180 requires it.
func appendCSVField(buf []byte, s string) []byte {
	quote := false
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == ',' || c == '\n' || c == '\r' {
			quote = true
			break
		}
	}
	if !quote && (len(s) == 0 || (s[0] != ' ' && s[0] != '\t')) {
		return append(buf, s...)
	}
	buf = append(buf, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' {
			buf = append(buf, '"')
		}
		buf = append(buf, s[i])
	}
	return append(buf, '"')
}
