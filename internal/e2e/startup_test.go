package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/synth"
)

// A worker, reconcile --watch and the relay started while one of their
// services is down wait for it, saying what they wait for, and come up when
// it does; a one-shot command exits 1 naming the service. Nothing panics.
func TestStartupWaitsForServices(t *testing.T) {
	for _, service := range []string{"postgres", "clickhouse", "kafka"} {
		t.Run(service, func(t *testing.T) {
			e := newEnv(t, 2)
			port := freePort(t)
			var target string
			var vars []string
			switch service {
			case "postgres":
				u, _ := url.Parse(e.pgDSN)
				target, u.Host = u.Host, fmt.Sprintf("127.0.0.1:%d", port)
				vars = []string{"CANOPY_POSTGRES_DSN=" + u.String()}
			case "clickhouse":
				u, _ := url.Parse(e.svc.chDSN)
				target, u.Host = u.Host, fmt.Sprintf("127.0.0.1:%d", port)
				vars = []string{"CANOPY_CLICKHOUSE_DSN=" + u.String()}
			case "kafka":
				target = e.svc.brokers[0]
				vars = []string{fmt.Sprintf("CANOPY_KAFKA_BROKERS=127.0.0.1:%d", port)}
			}
			if service != "kafka" {
				// A one-shot command fails at once, naming what is down.
				cmd := exec.Command(binary, "migrate")
				if service == "postgres" {
					cmd = exec.Command(binary, "hierarchy", "move", "1", "2")
				}
				cmd.Env = append(e.vars[:len(e.vars):len(e.vars)], vars...)
				out, err := cmd.CombinedOutput()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), service) || strings.Contains(string(out), "panic") {
					t.Fatalf("%v with %s down: %v\n%s", cmd.Args, service, err, out)
				}
			}

			env := append(append(e.vars[:len(e.vars):len(e.vars)], vars...), "CANOPY_KAFKA_HIERARCHY_TOPIC="+e.name+".hierarchy")
			// Long-running commands: the worker always, reconcile --watch
			// (ClickHouse and PostgreSQL) and the relay (PostgreSQL).
			procs := []*logged{startLogged(t, e, env, "worker")}
			if service != "kafka" {
				procs = append(procs, startLogged(t, e, env, "reconcile", "--watch", "1s"))
			}
			if service == "postgres" {
				procs = append(procs, startLogged(t, e, env, "relay"))
			}
			for _, p := range procs {
				p.await(t, "waiting for "+service)
			}
			proxy(t, port, target) // the service comes up
			const n = 50
			keys, values := make([][]byte, n), make([][]byte, n)
			for i := range n {
				keys[i] = []byte(fmt.Sprint(i))
				values[i] = synth.Event{ID: fmt.Sprintf("startup-%d", i), EntityID: 1, OccurredAt: time.Now().UTC(), Type: "t", Amount: 1}.JSON()
			}
			e.produce(keys, values)
			e.waitAcked(n, 3*time.Minute)
			if service != "kafka" {
				procs[1].await(t, "reconcile done")
			}
			if service == "postgres" {
				procs[2].await(t, "relay is active")
			}
			for _, p := range procs {
				select {
				case err := <-p.exited:
					t.Fatalf("%v exited: %v", p.args, err)
				default:
				}
				if b, _ := os.ReadFile(p.log); strings.Contains(string(b), "panic") {
					t.Fatalf("%v panicked:\n%s", p.args, b)
				}
			}
		})
	}
}

// logged is a long-running canopy command with its output in a file.
type logged struct {
	args   []string
	log    string
	exited chan error
}

func startLogged(t *testing.T, e *env, env []string, args ...string) *logged {
	t.Helper()
	p := &logged{args: args, log: filepath.Join(e.logDir, args[0]+".log"), exited: make(chan error, 1)}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- cmd.Wait(); _ = f.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("%v log:\n%s", args, b)
		}
	})
	return p
}

// await waits until the command's output says what, failing if it exits.
func (p *logged) await(t *testing.T, what string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if b, _ := os.ReadFile(p.log); strings.Contains(string(b), what) {
			return
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("%v exited before saying %q: %v", p.args, what, err)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v never said %q", p.args, what)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proxy forwards 127.0.0.1:port to target until the test ends, when it
// cuts every connection.
func proxy(t *testing.T, port int, target string) {
	t.Helper()
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		open  []net.Conn
		conns sync.WaitGroup
	)
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		conns.Wait()
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, up)
			mu.Unlock()
			conns.Add(2)
			go func() { defer conns.Done(); _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { defer conns.Done(); _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
}
