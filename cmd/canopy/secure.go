package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// security is what resolve builds from the kafka.tls.*, kafka.sasl.* and
// clickhouse.tls.* settings: the one place every client takes its TLS and
// authentication from.
type security struct {
	kafkaTLS  *tls.Config // nil: plain TCP
	kafkaSASL sasl.Mechanism
	chTLS     *tls.Config // nil: as the DSN says (secure=true)
	warnings  []string    // logged once by resolve
}

// secretFileSuffix names the setting that reads a password from a file: a
// .password() setting a.b has a companion a.b_file (env CANOPY_A_B_FILE), as
// container secrets are mounted.
const secretFileSuffix = "_file"

// addSecretFiles adds the …_file companion of every password setting. It
// runs last in newConfig.
func (c *config) addSecretFiles() {
	for _, s := range append([]*setting(nil), c.settings...) {
		if !s.secret || c.byKey[s.key+secretFileSuffix] != nil {
			continue
		}
		f := &setting{key: s.key + secretFileSuffix, help: "file holding " + s.key + " (a mounted secret; one trailing newline is ignored); not with " + s.key + " itself"}
		c.settings = append(c.settings, f)
		c.byKey[f.key] = f
	}
}

// readSecretFiles replaces each password whose …_file setting is given by
// the file's content. A file that cannot be read or is empty, or a password
// given both ways, is a usage error naming the setting; the content is never
// quoted.
func (c *config) readSecretFiles() error {
	for _, s := range c.settings {
		f := c.byKey[s.key+secretFileSuffix]
		if !s.secret || f == nil || f.val == "" {
			continue
		}
		if s.src != "default" && s.val != "" {
			return usageError{fmt.Errorf("setting %s: given by %s and by %s (%s); want one of them", s.key, s.src, f.key, f.src)}
		}
		b, err := os.ReadFile(f.val)
		if err != nil {
			return usageError{fmt.Errorf("setting %s: %s from %s cannot be read: %w", f.key, f.val, f.src, unwrapPath(err))}
		}
		v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if v == "" {
			return usageError{fmt.Errorf("setting %s: file %s from %s is empty; want the password", f.key, f.val, f.src)}
		}
		s.val, s.src = v, f.src+" (file "+f.val+")"
	}
	return nil
}

// unwrapPath drops the *PathError wrapper, whose path the message already
// names.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// buildSecurity checks the TLS and SASL settings together and loads the
// files they name. A bad combination is a usage error naming the setting.
func (c *config) buildSecurity() error {
	var sec security
	var err error
	if sec.kafkaTLS, err = c.tlsSettings("kafka", false, &sec); err != nil {
		return err
	}
	if sec.kafkaSASL, err = c.saslMechanism(sec.kafkaTLS != nil, &sec); err != nil {
		return err
	}
	if sec.chTLS, err = c.tlsSettings("clickhouse", c.chDSNSecure(), &sec); err != nil {
		return err
	}
	c.sec = sec
	return nil
}

// chDSNSecure reports whether the ClickHouse DSN asks for TLS (secure=true).
func (c *config) chDSNSecure() bool {
	opts, err := clickhouse.ParseDSN(c.get("clickhouse.dsn"))
	return err == nil && opts.TLS != nil
}

// tlsSettings builds the client TLS configuration of one service from its
// <service>.tls.* settings; nil when TLS is off. implied is TLS asked for
// elsewhere (ClickHouse's secure=true).
func (c *config) tlsSettings(service string, implied bool, sec *security) (*tls.Config, error) {
	p := service + ".tls."
	enabled := c.byKey[p+"enabled"]
	on := c.bool(p+"enabled") || implied
	if !on {
		for _, k := range []string{"ca_file", "cert_file", "key_file", "server_name"} {
			if s := c.byKey[p+k]; s.val != "" {
				return nil, usageError{fmt.Errorf("setting %s: given by %s while %s is false (from %s); want %s=true to connect over TLS", s.key, s.src, enabled.key, enabled.src, enabled.key)}
			}
		}
		if s := c.byKey[p+"insecure_skip_verify"]; s.b {
			return nil, usageError{fmt.Errorf("setting %s: true from %s while %s is false (from %s); want %s=true", s.key, s.src, enabled.key, enabled.src, enabled.key)}
		}
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.get(p + "server_name")}
	if ca := c.byKey[p+"ca_file"]; ca.val != "" {
		pem, err := os.ReadFile(ca.val)
		if err != nil {
			return nil, usageError{fmt.Errorf("setting %s: %s from %s cannot be read: %w", ca.key, ca.val, ca.src, unwrapPath(err))}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usageError{fmt.Errorf("setting %s: %s from %s holds no PEM certificate; want the CA certificates that sign the %s servers' certificates", ca.key, ca.val, ca.src, service)}
		}
		cfg.RootCAs = pool
	}
	cert, key := c.byKey[p+"cert_file"], c.byKey[p+"key_file"]
	switch {
	case cert.val != "" && key.val == "":
		return nil, usageError{fmt.Errorf("setting %s: empty while %s is given by %s; want the client certificate's private key", key.key, cert.key, cert.src)}
	case cert.val == "" && key.val != "":
		return nil, usageError{fmt.Errorf("setting %s: empty while %s is given by %s; want the client certificate", cert.key, key.key, key.src)}
	case cert.val != "":
		pair, err := tls.LoadX509KeyPair(cert.val, key.val)
		if err != nil {
			return nil, usageError{fmt.Errorf("setting %s / %s: %s and %s (from %s) do not load as a PEM certificate and its key: %w", cert.key, key.key, cert.val, key.val, cert.src, unwrapPath(err))}
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if skip := c.byKey[p+"insecure_skip_verify"]; skip.b {
		cfg.InsecureSkipVerify = true //nolint:gosec // only by explicit setting, with a warning
		sec.warnings = append(sec.warnings, fmt.Sprintf("%s is true (from %s): %s servers' certificates are NOT verified; anyone on the network path can read and change the traffic, passwords included. For tests only.", skip.key, skip.src, service))
	}
	return cfg, nil
}

// saslMechanism builds the Kafka SASL mechanism; nil for none.
func (c *config) saslMechanism(overTLS bool, sec *security) (sasl.Mechanism, error) {
	mech, user, pass := c.byKey["kafka.sasl.mechanism"], c.byKey["kafka.sasl.username"], c.byKey["kafka.sasl.password"]
	if mech.val == "none" {
		for _, s := range []*setting{user, pass} {
			if s.val != "" {
				return nil, usageError{fmt.Errorf("setting %s: given by %s while %s is none (from %s); want %s plain, scram-sha-256 or scram-sha-512", s.key, s.src, mech.key, mech.src, mech.key)}
			}
		}
		return nil, nil
	}
	if user.val == "" {
		return nil, usageError{fmt.Errorf("setting %s: empty while %s is %s (from %s); want the SASL user name", user.key, mech.key, mech.val, mech.src)}
	}
	if pass.val == "" {
		return nil, usageError{fmt.Errorf("setting %s: empty while %s is %s (from %s); want the password (or %s)", pass.key, mech.key, mech.val, mech.src, pass.key+secretFileSuffix)}
	}
	switch mech.val {
	case "plain":
		if !overTLS {
			sec.warnings = append(sec.warnings, "kafka.sasl.mechanism is plain without kafka.tls.enabled: the password crosses the network in clear text")
		}
		return plain.Auth{User: user.val, Pass: pass.val}.AsMechanism(), nil
	case "scram-sha-256":
		return scram.Auth{User: user.val, Pass: pass.val}.AsSha256Mechanism(), nil
	default: // scram-sha-512
		return scram.Auth{User: user.val, Pass: pass.val}.AsSha512Mechanism(), nil
	}
}

// kafkaOpts are the options every Kafka client starts from: the brokers,
// TLS and SASL; extra (dev mode, tests, the client's own) follow.
//
// franz-go gives up at once on a connection that a broker closes before
// its first answer, taking it for a listener that wants SASL. Once
// awaitKafka has been answered with these settings, that guess is wrong:
// such a close is a broker restarting (a rolling upgrade), and a record
// produced into it must be retried like any other disconnect, not failed.
// So clients made after the probe retry it; the probe itself keeps the
// guess, and with it the clear error for a missing login.
func (c *config) kafkaOpts(extra ...kgo.Opt) []kgo.Opt {
	opts := []kgo.Opt{kgo.SeedBrokers(c.brokers()...)}
	if c.sec.kafkaTLS != nil {
		opts = append(opts, kgo.DialTLSConfig(c.sec.kafkaTLS.Clone()))
	}
	if c.sec.kafkaSASL != nil {
		opts = append(opts, kgo.SASL(c.sec.kafkaSASL))
	}
	if c.kafkaReached.Load() {
		opts = append(opts, kgo.AlwaysRetryEOF())
	}
	return append(opts, extra...)
}

// awaitKafka makes sure the brokers answer with these settings: a patient
// ctx waits while they are unreachable; a refused login or certificate
// fails at once.
func awaitKafka(ctx context.Context, cfg *config, extra ...kgo.Opt) error {
	return await(ctx, "kafka", func() error {
		cl, err := kgo.NewClient(cfg.kafkaOpts(extra...)...)
		if err != nil {
			return usageError{fmt.Errorf("kafka: %w", err)}
		}
		defer cl.Close()
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := cl.Ping(pctx); err != nil {
			if cfg.sec.kafkaTLS == nil && !refusedOnly(err) {
				for _, b := range cfg.brokers() {
					if speaksTLS(ctx, b) {
						return connectionError{"kafka", b, "the broker speaks TLS but kafka.tls.enabled is false", err}
					}
				}
			}
			return fmt.Errorf("kafka %s: %w", strings.Join(cfg.brokers(), ","), err)
		}
		cfg.kafkaReached.Store(true)
		return nil
	})
}

// connectionError is a server that was reached but refused this client's
// TLS or credentials: retrying cannot help, so await gives up at once.
type connectionError struct {
	service, addr, cause string
	err                  error
}

func (e connectionError) Error() string {
	at := e.service
	if e.addr != "" {
		at += " " + e.addr
	}
	return fmt.Sprintf("%s: %s (not retried): %v", at, e.cause, e.err)
}
func (e connectionError) Unwrap() error { return e.err }

// refusal says why a connection attempt can never succeed as configured:
// the server's certificate is not trusted, the server does not speak the
// TLS the client does, or it refused the credentials. "" for anything else
// (unreachable, timeouts), which a patient command waits out.
func refusal(err error) string {
	var (
		ce    connectionError
		unkCA x509.UnknownAuthorityError
		host  x509.HostnameError
		inv   x509.CertificateInvalidError
		verr  *tls.CertificateVerificationError
		rec   tls.RecordHeaderError
		alert tls.AlertError
		first *kgo.ErrFirstReadEOF
		pgErr *pgconn.PgError
		chErr *clickhouse.Exception
	)
	switch {
	case errors.As(err, &ce):
		return ce.cause
	case errors.As(err, &unkCA), errors.As(err, &host), errors.As(err, &inv), errors.As(err, &verr):
		return "the server's TLS certificate is not trusted (set the CA file, or check the host name)"
	case errors.As(err, &rec):
		return "the server does not speak TLS (TLS is enabled for a plain-text port)"
	case errors.As(err, &alert):
		return "the server refused the TLS handshake"
	case errors.As(err, &first):
		return "the broker closed the connection at once: TLS is enabled for a plain-text listener, or the listener expects SASL"
	case errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.IllegalSaslState), errors.Is(err, kerr.UnsupportedSaslMechanism):
		return "SASL authentication failed"
	case errors.Is(err, kerr.ClusterAuthorizationFailed), errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.GroupAuthorizationFailed):
		return "not authorized"
	case errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000"):
		return "authentication failed"
	case errors.As(err, &chErr) && (chErr.Code == 192 || chErr.Code == 193 || chErr.Code == 194 || chErr.Code == 195 || chErr.Code == 516):
		return "authentication failed"
	case strings.Contains(err.Error(), "plaintext connection speaking to a tls endpoint"):
		return "the broker speaks TLS but kafka.tls.enabled is false"
	case strings.Contains(err.Error(), "server refused TLS connection"):
		return "the server does not offer TLS (sslmode asks for it)"
	}
	return ""
}

// refusedOnly reports whether err is only a refused TCP connection: nothing
// listens, so there is no server to sniff.
func refusedOnly(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}

// speaksTLS reports whether the server at addr answers a TLS handshake: a
// plain-text client that is hung up on may be talking to a TLS port.
func speaksTLS(ctx context.Context, addr string) bool {
	d := &net.Dialer{Timeout: 3 * time.Second}
	hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	host, _, _ := net.SplitHostPort(addr)
	conn, err := (&tls.Dialer{NetDialer: d, Config: &tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // only asks whether the port speaks TLS; nothing is sent
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
	}}).DialContext(hctx, "tcp", addr)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// closedEarly reports whether err looks like a server hanging up on the
// client right after connecting (a plain-text client on a TLS port).
func closedEarly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}
