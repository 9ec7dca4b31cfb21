package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// squeeze collapses runs of spaces, so canopy config's column width does
// not matter to a comparison.
func squeeze(s string) string { return regexp.MustCompile(` +`).ReplaceAllString(s, " ") }

// resolved is a config resolved from args and env as the root command does,
// with the caller's CANOPY_* settings hidden; it fails the test on error.
func resolved(t *testing.T, env map[string]string, args ...string) *config {
	t.Helper()
	cfg, err := resolveErr(t, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func resolveErr(t *testing.T, env map[string]string, args ...string) (*config, error) {
	t.Helper()
	clearEnv(t)
	t.Chdir(t.TempDir()) // no ./canopy.yaml
	for k, v := range env {
		t.Setenv(k, v)
	}
	root := &cobra.Command{Use: "canopy"}
	cfg := newConfig()
	cfg.register(root.PersistentFlags())
	if err := root.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return cfg, cfg.resolve(root)
}

// pki is a throwaway CA and a certificate it signed for 127.0.0.1, as PEM
// files.
type pki struct{ ca, cert, key, junk string }

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	p := pki{ca: write("ca.pem", "CERTIFICATE", caDER), cert: write("cert.pem", "CERTIFICATE", der),
		key: write("key.pem", "PRIVATE KEY", keyDER), junk: filepath.Join(dir, "junk.pem")}
	if err := os.WriteFile(p.junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBadSecuritySettingsRefused: each bad TLS, SASL or secret-file setting
// is exit 2 from every command (canopy config here), naming the setting,
// and no password appears in the message.
func TestBadSecuritySettingsRefused(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(pwFile, []byte("fileS3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"kafka cert without key", nil, []string{"--kafka-tls-enabled", "--kafka-tls-cert-file", p.cert},
			[]string{"kafka.tls.key_file", "kafka.tls.cert_file"}},
		{"kafka key without cert", nil, []string{"--kafka-tls-enabled", "--kafka-tls-key-file", p.key},
			[]string{"kafka.tls.cert_file"}},
		{"kafka unreadable CA", nil, []string{"--kafka-tls-enabled", "--kafka-tls-ca-file", missing},
			[]string{"kafka.tls.ca_file", missing, "cannot be read", "flag --kafka-tls-ca-file"}},
		{"kafka CA not PEM", nil, []string{"--kafka-tls-enabled", "--kafka-tls-ca-file", p.junk},
			[]string{"kafka.tls.ca_file", "no PEM certificate"}},
		{"kafka CA without TLS", nil, []string{"--kafka-tls-ca-file", p.ca},
			[]string{"kafka.tls.ca_file", "kafka.tls.enabled"}},
		{"kafka skip-verify without TLS", map[string]string{"CANOPY_KAFKA_TLS_INSECURE_SKIP_VERIFY": "true"}, nil,
			[]string{"kafka.tls.insecure_skip_verify", "env CANOPY_KAFKA_TLS_INSECURE_SKIP_VERIFY", "kafka.tls.enabled"}},
		{"kafka key not matching", nil, []string{"--kafka-tls-enabled", "--kafka-tls-cert-file", p.cert, "--kafka-tls-key-file", p.junk},
			[]string{"kafka.tls.cert_file", "kafka.tls.key_file"}},
		{"kafka TLS not a bool", map[string]string{"CANOPY_KAFKA_TLS_ENABLED": "on please"}, nil,
			[]string{"kafka.tls.enabled", "true or false"}},
		{"unknown mechanism", nil, []string{"--kafka-sasl-mechanism", "gssapi"},
			[]string{"kafka.sasl.mechanism", "one of none, plain, scram-sha-256, scram-sha-512"}},
		{"mechanism without user", nil, []string{"--kafka-sasl-mechanism", "scram-sha-256", "--kafka-sasl-password", "argS3cret"},
			[]string{"kafka.sasl.username"}},
		{"mechanism without password", nil, []string{"--kafka-sasl-mechanism", "plain", "--kafka-sasl-username", "u"},
			[]string{"kafka.sasl.password", "kafka.sasl.password_file"}},
		{"user without mechanism", nil, []string{"--kafka-sasl-username", "u"},
			[]string{"kafka.sasl.username", "kafka.sasl.mechanism"}},
		{"password without mechanism", map[string]string{"CANOPY_KAFKA_SASL_PASSWORD": "envS3cret"}, nil,
			[]string{"kafka.sasl.password", "env CANOPY_KAFKA_SASL_PASSWORD"}},
		{"unreadable password file", map[string]string{"CANOPY_KAFKA_SASL_PASSWORD_FILE": missing}, nil,
			[]string{"kafka.sasl.password_file", "env CANOPY_KAFKA_SASL_PASSWORD_FILE", "cannot be read"}},
		{"empty password file", map[string]string{"CANOPY_CLICKHOUSE_PASSWORD_FILE": empty}, nil,
			[]string{"clickhouse.password_file", "empty"}},
		{"password given twice", map[string]string{"CANOPY_POSTGRES_PASSWORD_FILE": pwFile, "CANOPY_POSTGRES_PASSWORD": "envS3cret"}, nil,
			[]string{"postgres.password", "env CANOPY_POSTGRES_PASSWORD", "postgres.password_file"}},
		{"clickhouse cert without key", nil, []string{"--clickhouse-tls-enabled", "--clickhouse-tls-cert-file", p.cert},
			[]string{"clickhouse.tls.key_file"}},
		{"clickhouse unreadable CA", nil, []string{"--clickhouse-dsn", "clickhouse://u@h:9440/db?secure=true", "--clickhouse-tls-ca-file", missing},
			[]string{"clickhouse.tls.ca_file", "cannot be read"}},
		{"clickhouse server name without TLS", nil, []string{"--clickhouse-tls-server-name", "ch"},
			[]string{"clickhouse.tls.server_name", "clickhouse.tls.enabled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code, err := runRoot(t, tt.env, append([]string{"config", "--config", writeConfig(t, "")}, tt.args...)...)
			var u usageError
			if code != 2 || !errors.As(err, &u) {
				t.Fatalf("exit %d, err %v, want a usage error (exit 2)", code, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			for _, secret := range []string{"argS3cret", "envS3cret", "fileS3cret"} {
				if strings.Contains(err.Error(), secret) || strings.Contains(out, secret) {
					t.Errorf("error %q or output shows a password", err)
				}
			}
		})
	}
}

// TestSecuritySettingsBuilt: good settings become the clients' TLS and SASL
// options, a password file's content (one trailing newline dropped) is the
// password, and canopy config shows neither password nor file content.
func TestSecuritySettingsBuilt(t *testing.T) {
	p := newPKI(t)
	pwFile := filepath.Join(t.TempDir(), "sasl")
	if err := os.WriteFile(pwFile, []byte("fileS3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"CANOPY_KAFKA_TLS_ENABLED":        "true",
		"CANOPY_KAFKA_TLS_CA_FILE":        p.ca,
		"CANOPY_KAFKA_TLS_CERT_FILE":      p.cert,
		"CANOPY_KAFKA_TLS_KEY_FILE":       p.key,
		"CANOPY_KAFKA_TLS_SERVER_NAME":    "kafka.internal",
		"CANOPY_KAFKA_SASL_MECHANISM":     "SCRAM-SHA-512",
		"CANOPY_KAFKA_SASL_USERNAME":      "canopy",
		"CANOPY_KAFKA_SASL_PASSWORD_FILE": pwFile,
		"CANOPY_CLICKHOUSE_DSN":           "clickhouse://w@127.0.0.1:9440/canopy?secure=true",
		"CANOPY_CLICKHOUSE_TLS_CA_FILE":   p.ca,
		"CANOPY_POSTGRES_PASSWORD":        "pgS3cret",
	}
	cfg := resolved(t, env)
	if got := cfg.get("kafka.sasl.password"); got != "fileS3cret" {
		t.Errorf("kafka.sasl.password = %q, want the file's content without its newline", got)
	}
	k := cfg.sec.kafkaTLS
	if k == nil || k.RootCAs == nil || len(k.Certificates) != 1 || k.ServerName != "kafka.internal" || k.InsecureSkipVerify || k.MinVersion < tls.VersionTLS12 {
		t.Fatalf("kafka TLS = %+v", k)
	}
	if cfg.sec.kafkaSASL == nil || cfg.sec.kafkaSASL.Name() != "SCRAM-SHA-512" {
		t.Errorf("kafka SASL = %v, want SCRAM-SHA-512", cfg.sec.kafkaSASL)
	}
	// secure=true alone turns ClickHouse TLS on, with the CA of the setting.
	if c := cfg.sec.chTLS; c == nil || c.RootCAs == nil || c.InsecureSkipVerify {
		t.Errorf("clickhouse TLS = %+v", c)
	}
	// Every Kafka client starts from these options.
	cl, err := kgo.NewClient(cfg.kafkaOpts(kgo.ClientID("x"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if v := cl.OptValue(kgo.DialTLSConfig); v == nil || v.(*tls.Config) == nil || v.(*tls.Config).ServerName != "kafka.internal" {
		t.Errorf("client TLS option = %v", v)
	}
	if v := cl.OptValue(kgo.SeedBrokers); fmt.Sprint(v) != fmt.Sprint(cfg.brokers()) {
		t.Errorf("client seeds = %v, want %v", v, cfg.brokers())
	}

	out, code, err := runRoot(t, env, "config", "--config", writeConfig(t, ""))
	if code != 0 {
		t.Fatalf("exit %d: %v", code, err)
	}
	for _, w := range []string{"kafka.sasl.password = xxxxx (env CANOPY_KAFKA_SASL_PASSWORD_FILE (file " + pwFile + "))",
		"postgres.password = xxxxx (env CANOPY_POSTGRES_PASSWORD)", "kafka.sasl.mechanism = scram-sha-512"} {
		if !strings.Contains(squeeze(out), w) {
			t.Errorf("canopy config lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "fileS3cret") || strings.Contains(out, "pgS3cret") {
		t.Errorf("canopy config shows a password:\n%s", out)
	}

	// The defaults: no TLS, no SASL, nothing to warn about.
	plain := resolved(t, nil)
	if plain.sec.kafkaTLS != nil || plain.sec.kafkaSASL != nil || plain.sec.chTLS != nil || len(plain.sec.warnings) != 0 {
		t.Errorf("default security = %+v", plain.sec)
	}
	// Skip-verify is explicit only, and warned about.
	skip := resolved(t, map[string]string{"CANOPY_KAFKA_TLS_ENABLED": "true", "CANOPY_KAFKA_TLS_INSECURE_SKIP_VERIFY": "true"})
	if skip.sec.kafkaTLS == nil || !skip.sec.kafkaTLS.InsecureSkipVerify || len(skip.sec.warnings) != 1 || !strings.Contains(skip.sec.warnings[0], "NOT verified") {
		t.Errorf("skip-verify security = %+v", skip.sec)
	}
}

// A broker that closes a connection before answering is, once the brokers
// have answered these settings, a restart: clients made after awaitKafka
// retry it instead of failing what they produce (the fault tests restart
// Kafka under running workers). The probe itself does not, so a listener
// that wants a login still fails it at once.
func TestKafkaClientsRetryEOFOnceReached(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := resolved(t, map[string]string{"CANOPY_KAFKA_BROKERS": strings.Join(c.ListenAddrs(), ",")})
	retries := func() bool {
		cl, err := kgo.NewClient(cfg.kafkaOpts()...)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		return cl.OptValue(kgo.AlwaysRetryEOF).(bool)
	}
	if retries() {
		t.Fatal("clients retry a first-read EOF before the brokers answered")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := awaitKafka(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if !retries() {
		t.Fatal("clients made after awaitKafka give up on a first-read EOF")
	}
}

// TestHelpHidesSecrets: --help shows no password default, and every
// password setting has its _file companion.
func TestHelpHidesSecrets(t *testing.T) {
	out, code, err := runRoot(t, nil, "--help")
	if code != 0 {
		t.Fatalf("exit %d: %v", code, err)
	}
	for _, s := range newConfig().settings {
		if !s.secret {
			continue
		}
		if newConfig().byKey[s.key+"_file"] == nil {
			t.Errorf("%s has no %s_file", s.key, s.key)
		}
		if !strings.Contains(out, "--"+s.flag()+"-file") {
			t.Errorf("--help lacks --%s-file", s.flag())
		}
		if s.def != "" && strings.Contains(out, s.def) {
			t.Errorf("--help shows the default of %s", s.key)
		}
	}
}

// TestRefusalsNotWaited: a certificate or login refusal ends even a
// patient await at once, naming the service and the cause; an unreachable
// server is waited for.
func TestRefusalsNotWaited(t *testing.T) {
	ctx, cancel := context.WithTimeout(patiently(context.Background(), discardLogger()), 30*time.Second)
	defer cancel()
	tries := 0
	start := time.Now()
	err := await(ctx, "kafka", func() error {
		tries++
		return fmt.Errorf("dial: %w", x509.UnknownAuthorityError{})
	})
	if tries != 1 || err == nil || !strings.Contains(err.Error(), "kafka") || !strings.Contains(err.Error(), "not trusted") || time.Since(start) > 5*time.Second {
		t.Errorf("untrusted certificate: %d tries, err %v", tries, err)
	}
	tries = 0
	err = await(ctx, "postgres", func() error {
		tries++
		if tries < 2 {
			return errors.New("dial tcp: connection refused")
		}
		return nil
	})
	if err != nil || tries != 2 {
		t.Errorf("unreachable then up: %d tries, err %v", tries, err)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
