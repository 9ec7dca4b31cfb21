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

// A worker started while one of its services is down waits for it, saying
// what it waits for, and comes up when it does; a one-shot command exits 1
// naming the service. Nothing panics.
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

			log := filepath.Join(e.logDir, "worker.log")
			f, err := os.Create(log)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(binary, "worker")
			cmd.Env = append(e.vars[:len(e.vars):len(e.vars)], vars...)
			cmd.Stdout, cmd.Stderr = f, f
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait(); _ = f.Close() }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				if t.Failed() {
					b, _ := os.ReadFile(log)
					t.Logf("worker log:\n%s", b)
				}
			})
			deadline := time.Now().Add(90 * time.Second)
			for {
				b, _ := os.ReadFile(log)
				if strings.Contains(string(b), "waiting for "+service) {
					break
				}
				select {
				case err := <-exited:
					t.Fatalf("worker exited while %s was down: %v", service, err)
				case <-time.After(200 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("worker never said it waits for %s", service)
				}
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
			select {
			case err := <-exited:
				t.Fatalf("worker exited: %v", err)
			default:
			}
			b, _ := os.ReadFile(log)
			if strings.Contains(string(b), "panic") {
				t.Fatalf("worker panicked:\n%s", b)
			}
		})
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
