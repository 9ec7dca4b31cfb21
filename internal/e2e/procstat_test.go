package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/canopyhq/canopy/internal/cputime"
	"github.com/canopyhq/canopy/internal/testenv"
)

// clockTick is the unit of /proc/PID/stat's CPU times (USER_HZ, 100 on
// every Linux this runs on).
const clockTick = 10 * time.Millisecond

// serverPIDs finds the pids of the servers scripts/services started, from
// its run/NAME.pid files ($CANOPY_DATA_DIR, default <repo>/.data/services).
// A server without a readable pid file is left out. "clickhouse" is the
// service the tests run against (CANOPY_TEST_CLICKHOUSE_SERVICE, as
// scripts/services env sets it: clickhouse26 for ClickHouse 26.9).
func serverPIDs() map[string]int {
	dir := testenv.ServicesDir()
	out := map[string]int{}
	for _, name := range []string{"kafka", "clickhouse", "postgres", "zookeeper"} {
		service := name
		if s := os.Getenv("CANOPY_TEST_CLICKHOUSE_SERVICE"); name == "clickhouse" && s != "" {
			service = s
		}
		b, err := os.ReadFile(filepath.Join(dir, "run", service+".pid"))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			out[name] = pid
		}
	}
	return out
}

// procCPU is the CPU time a process has used: its own user and system time,
// plus, with children, the time of its children — those it has reaped
// (cutime, cstime) and those still running. PostgreSQL needs children: its
// work runs in one backend process per connection.
func procCPU(pid int, children bool) time.Duration {
	f := statFields(pid)
	if len(f) < 15 {
		return 0
	}
	ticks := atoi(f[11]) + atoi(f[12]) // utime, stime
	if children {
		ticks += atoi(f[13]) + atoi(f[14]) // cutime, cstime
		eachChild(pid, func(_ int, cf []string) { ticks += atoi(cf[11]) + atoi(cf[12]) })
	}
	return time.Duration(ticks) * clockTick
}

// pgBackendsCPU is the CPU time used so far by the PostgreSQL backends,
// children of the postmaster pid, that are connected to database db: the
// process title PostgreSQL gives a backend is "postgres: USER DB HOST
// STATE". A backend that has exited is no longer counted (its time went
// to the postmaster's cutime); Canopy's pooled connections last the run.
func pgBackendsCPU(postmaster int, db string) time.Duration {
	var ticks int64
	eachChild(postmaster, func(pid int, f []string) {
		title, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil {
			return
		}
		words := strings.Fields(strings.ReplaceAll(string(title), "\x00", " "))
		if len(words) >= 3 && words[0] == "postgres:" && words[2] == db {
			ticks += atoi(f[11]) + atoi(f[12])
		}
	})
	return time.Duration(ticks) * clockTick
}

// eachChild calls fn with the pid and statFields of every running child
// of parent.
func eachChild(parent int, fn func(pid int, stat []string)) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); len(f) > 12 && atoi(f[1]) == int64(parent) {
			fn(pid, f)
		}
	}
}

// statFields returns /proc/PID/stat after the command name: field 0 is the
// state, field 1 the parent pid, fields 11 and 12 utime and stime.
func statFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

func atoi(s string) int64 { v, _ := strconv.ParseInt(s, 10, 64); return v }

// cpuMeter measures the CPU time the servers and this process spend between
// start and stop.
type cpuMeter struct {
	pids  map[string]int
	pgDB  string // if set, also "postgres backends": those connected to it
	start map[string]time.Duration
}

func startCPU() *cpuMeter { return startCPUIn("") }

// startCPUIn is startCPU, also measuring the PostgreSQL backends connected
// to database db apart ("postgres backends").
func startCPUIn(db string) *cpuMeter {
	m := &cpuMeter{pids: serverPIDs(), pgDB: db, start: map[string]time.Duration{}}
	for name, d := range m.sample() {
		m.start[name] = d
	}
	return m
}

func (m *cpuMeter) sample() map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, pid := range m.pids {
		out[name] = procCPU(pid, name == "postgres")
		if name == "postgres" && m.pgDB != "" {
			out["postgres backends"] = pgBackendsCPU(pid, m.pgDB)
		}
	}
	out["driver"] = cputime.Self()
	return out
}

// stop returns the CPU time each process used since start.
func (m *cpuMeter) stop() map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, d := range m.sample() {
		out[name] = d - m.start[name]
	}
	return out
}

// workerUsage is a finished worker's CPU time and peak resident memory.
// The peak is the process's own VmHWM, read by stop before it signalled
// the worker: the ru_maxrss that wait4 reports also holds the test
// process's own peak, which Linux carries into a child across exec.
func workerUsage(w *worker) (cpu time.Duration, maxRSS int64) {
	st := w.cmd.ProcessState
	if st == nil {
		return 0, 0
	}
	cpu = st.UserTime() + st.SystemTime()
	maxRSS = w.hwm
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok && maxRSS == 0 {
		maxRSS = ru.Maxrss * 1024 // kilobytes on Linux; an upper bound, see above
	}
	return cpu, maxRSS
}

// peakRSS is a running process's peak resident memory (VmHWM), 0 if
// unknown.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			return atoi(f[1]) * 1024 // kB
		}
	}
	return 0
}
