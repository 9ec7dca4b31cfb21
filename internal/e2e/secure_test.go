package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/synth"
	"github.com/canopyhq/canopy/internal/testenv"
)

// secureServices are the TLS endpoints of scripts/services: Kafka's
// SASL_SSL listener (SCRAM), ClickHouse's secure native port with a
// password user, PostgreSQL with ssl=on, all with certificates of one
// self-signed CA.
type secureServices struct {
	ca                       string
	saslBrokers, saslUser    string
	saslPassword             string
	chAddr, chUser, chPass   string
	saslPassFile, chPassFile string
}

func needSecure(t *testing.T) secureServices {
	t.Helper()
	s := secureServices{
		ca:           os.Getenv("CANOPY_TEST_TLS_CA"),
		saslBrokers:  os.Getenv("CANOPY_TEST_KAFKA_SASL_BROKERS"),
		saslUser:     os.Getenv("CANOPY_TEST_KAFKA_SASL_USER"),
		saslPassFile: os.Getenv("CANOPY_TEST_KAFKA_SASL_PASSWORD_FILE"),
		chAddr:       os.Getenv("CANOPY_TEST_CLICKHOUSE_SECURE_ADDR"),
		chUser:       os.Getenv("CANOPY_TEST_CLICKHOUSE_TLS_USER"),
		chPassFile:   os.Getenv("CANOPY_TEST_CLICKHOUSE_TLS_PASSWORD_FILE"),
	}
	if s.ca == "" || s.saslBrokers == "" || s.chAddr == "" || s.saslPassFile == "" || s.chPassFile == "" {
		testenv.Unavailable(t, "the CANOPY_TEST_* TLS settings are not set")
	}
	for _, f := range []struct {
		file string
		into *string
	}{{s.saslPassFile, &s.saslPassword}, {s.chPassFile, &s.chPass}} {
		b, err := os.ReadFile(f.file)
		if err != nil {
			t.Fatal(err)
		}
		*f.into = strings.TrimSpace(string(b))
	}
	return s
}

// secureVars switch every canopy command of e to the TLS endpoints: Kafka
// over SASL_SSL with SCRAM, ClickHouse's secure port with a password user,
// PostgreSQL with sslmode=verify-full as a role of its own. Passwords come
// from files. It returns the PostgreSQL password.
func (e *env) secureVars(s secureServices) string {
	e.t.Helper()
	ctx := context.Background()
	dir := e.t.TempDir()
	// A PostgreSQL role with a password no other text contains, so a leak
	// of it can be searched for.
	role := e.name + "_tls"
	pgPass := fmt.Sprintf("pgpw%016x", rand.Uint64())
	if _, err := e.pg.Exec(ctx, fmt.Sprintf("create role %s login superuser password '%s'", role, pgPass)); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { // before newEnv's cleanup drops the database
		for _, q := range []string{"reassign owned by " + role + " to current_user", "drop owned by " + role, "drop role if exists " + role} {
			_, _ = e.pg.Exec(context.Background(), q)
		}
	})
	pgFile := filepath.Join(dir, "pg.password")
	if err := os.WriteFile(pgFile, []byte(pgPass+"\n"), 0o600); err != nil {
		e.t.Fatal(err)
	}
	u, _ := url.Parse(e.pgDSN)
	u.User = url.User(role)
	u.Host = strings.Replace(u.Host, "127.0.0.1", "localhost", 1) // verified by name too
	q := u.Query()
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", s.ca)
	u.RawQuery = q.Encode()
	e.vars = append(e.vars,
		"CANOPY_KAFKA_BROKERS="+s.saslBrokers,
		"CANOPY_KAFKA_TLS_ENABLED=true",
		"CANOPY_KAFKA_TLS_CA_FILE="+s.ca,
		"CANOPY_KAFKA_SASL_MECHANISM=scram-sha-256",
		"CANOPY_KAFKA_SASL_USERNAME="+s.saslUser,
		"CANOPY_KAFKA_SASL_PASSWORD_FILE="+s.saslPassFile,
		"CANOPY_CLICKHOUSE_DSN=clickhouse://"+s.chUser+"@"+s.chAddr+"/canopy?dial_timeout=5s",
		"CANOPY_CLICKHOUSE_TLS_ENABLED=true",
		"CANOPY_CLICKHOUSE_TLS_CA_FILE="+s.ca,
		"CANOPY_CLICKHOUSE_PASSWORD_FILE="+s.chPassFile,
		"CANOPY_POSTGRES_DSN="+u.String(),
		"CANOPY_POSTGRES_PASSWORD_FILE="+pgFile,
		"CANOPY_KAFKA_HIERARCHY_TOPIC="+e.name+".hierarchy",
		"CANOPY_LOG_LEVEL=debug",
	)
	return pgPass
}

// TestSecurePipelineMatchesOracle runs the pipeline over encrypted,
// authenticated connections only (SASL_SSL/SCRAM Kafka, TLS ClickHouse
// with a password, verify-full PostgreSQL) and checks every table against
// the oracle; then searches every log line, every command's output and
// /metrics for the passwords used.
func TestSecurePipelineMatchesOracle(t *testing.T) {
	sec := needSecure(t)
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 4)
	pgPass := e.secureVars(sec)
	var outputs strings.Builder
	outputs.WriteString(e.run("migrate")) // again, over TLS: idempotent
	sc := e.setUp(seed, 2000, 30000)
	keys, values := sc.records()
	e.produce(keys, values)

	relay := e.startRelay(1)
	_ = relay
	w := e.startWorker(1)
	metricsURL := waitLogMatch(t, w.log, regexp.MustCompile(`metrics=(http://\S+/metrics)`))
	e.waitAcked(uint64(len(values)), 5*time.Minute)
	e.waitRelayed(e.name+".hierarchy", e.maxOutboxSeq())
	metrics := get(t, metricsURL)
	if !strings.Contains(metrics, "canopy_") {
		t.Fatalf("/metrics holds no canopy metric:\n%.500s", metrics)
	}
	w.stop(t)
	e.verify(sc)

	// Every command's output and every log line of the run.
	outputs.WriteString(e.run("config"))
	outputs.WriteString(metrics)
	_ = filepath.Walk(e.logDir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && strings.HasSuffix(path, ".log") {
			b, _ := os.ReadFile(path)
			outputs.Write(b)
		}
		return nil
	})
	all := outputs.String()
	if !strings.Contains(all, "worker started") || !strings.Contains(all, "relay is active") {
		t.Fatalf("the logs searched lack the worker's or relay's lines")
	}
	for name, secret := range map[string]string{"kafka.sasl.password": sec.saslPassword, "clickhouse.password": sec.chPass, "postgres.password": pgPass} {
		if secret == "" || strings.Contains(all, secret) {
			t.Errorf("%s (%d chars) appears in a log line, output or /metrics", name, len(secret))
		}
	}
}

// TestSecureConnectionsRefused: a wrong SASL password, an untrusted server
// certificate, a wrong ClickHouse password and a plain-text client on a
// TLS-only port each stop a worker (which waits for unreachable services)
// within seconds, with exit 1 and an error naming the service and the
// cause; nothing is written.
func TestSecureConnectionsRefused(t *testing.T) {
	sec := needSecure(t)
	e := newEnv(t, 2)
	e.secureVars(sec)
	e.produce([][]byte{[]byte("1")}, [][]byte{synth.Event{ID: "refused-1", EntityID: 1, OccurredAt: time.Now().UTC(), Type: "t", Amount: 1}.JSON()})
	wrong := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrong, []byte("not-the-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// PostgreSQL's DSN with a root certificate that did not sign the server's.
	var pgDSN string
	for _, v := range e.vars {
		if d, ok := strings.CutPrefix(v, "CANOPY_POSTGRES_DSN="); ok {
			pgDSN = d
		}
	}
	otherCA := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(otherCA, selfSignedCA(t), 0o600); err != nil {
		t.Fatal(err)
	}
	untrustedPG := strings.Replace(pgDSN, "sslrootcert="+url.QueryEscape(sec.ca), "sslrootcert="+url.QueryEscape(otherCA), 1)
	if untrustedPG == pgDSN {
		t.Fatalf("no sslrootcert=%s in %s", sec.ca, pgDSN)
	}
	tests := []struct {
		name string
		vars []string
		want []string
	}{
		{"postgres certificate untrusted", []string{"CANOPY_POSTGRES_DSN=" + untrustedPG},
			[]string{"postgres", "certificate"}},
		{"wrong PostgreSQL password", []string{"CANOPY_POSTGRES_PASSWORD_FILE=" + wrong},
			[]string{"postgres", "password authentication failed"}},
		{"wrong SASL password", []string{"CANOPY_KAFKA_SASL_PASSWORD_FILE=" + wrong},
			[]string{"kafka", "SASL authentication failed"}},
		{"kafka certificate untrusted", []string{"CANOPY_KAFKA_TLS_CA_FILE="},
			[]string{"kafka", "certificate is not trusted"}},
		{"clickhouse certificate untrusted", []string{"CANOPY_CLICKHOUSE_TLS_CA_FILE="},
			[]string{"clickhouse", "certificate is not trusted"}},
		{"wrong ClickHouse password", []string{"CANOPY_CLICKHOUSE_PASSWORD_FILE=" + wrong},
			[]string{"clickhouse", "authentication failed"}},
		{"plain text to Kafka's TLS listener", []string{"CANOPY_KAFKA_TLS_ENABLED=false", "CANOPY_KAFKA_TLS_CA_FILE="},
			[]string{"kafka", "speaks TLS"}},
		{"plain text to ClickHouse's TLS port", []string{"CANOPY_CLICKHOUSE_TLS_ENABLED=false", "CANOPY_CLICKHOUSE_TLS_CA_FILE="},
			[]string{"clickhouse", "speaks TLS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary, "worker")
			cmd.Env = append(append(e.vars[:len(e.vars):len(e.vars)], tt.vars...),
				"CANOPY_INGEST_STATE_DIR="+filepath.Join(t.TempDir(), "state"))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			start := time.Now()
			err := cmd.Run()
			took := time.Since(start)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("worker: %v after %s, want exit 1\n%s", err, took, out.String())
			}
			if took > 45*time.Second {
				t.Errorf("worker took %s to give up, want seconds", took)
			}
			last := lastLine(out.String())
			for _, w := range tt.want {
				if !strings.Contains(last, w) {
					t.Errorf("error %q does not mention %q", last, w)
				}
			}
			if strings.Contains(out.String(), "panic") || strings.Contains(out.String(), sec.saslPassword) || strings.Contains(out.String(), sec.chPass) {
				t.Errorf("output shows a panic or a password:\n%s", out.String())
			}
			var n uint64
			if err := e.ch.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM %s.ingest_acks", e.chDB)).Scan(&n); err != nil || n != 0 {
				t.Errorf("ingest_acks holds %d rows (%v), want none", n, err)
			}
		})
	}
}

// lastLine is the last non-empty line of out: the command's error.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// waitLogMatch waits until a log file matches re and returns its first group.
func waitLogMatch(t *testing.T, file string, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(file)
		if m := re.FindSubmatch(b); m != nil {
			return string(m[1])
		}
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := os.ReadFile(file)
	t.Fatalf("%s never matched %s:\n%s", file, re, b)
	return ""
}

func get(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u) //nolint:gosec,noctx // the test's own worker
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// selfSignedCA is the PEM of a new CA certificate that signed nothing.
func selfSignedCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not the services' CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(cryptorand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
