// Package ingest is the event path. It reads events (from Kafka, files or a
// spooled PostgreSQL query), decodes and validates them, expands each one
// across its entity's ancestor chain, sums the batch in memory for every
// configured time grain, and writes the batch's events, rollups, ack and
// failures to ClickHouse exactly once; records that fail go to the retry
// and dead-letter topics.
//
// It owns the Processor (one batch, as the steps of docs/exactly-once.md),
// the Worker (a consumer-group member and its partitions' rests), the Router
// and the per-partition event-id claims (ingest/idstate) of
// ingest.dedup=partitioned, backfill and reconcile, the header codec of
// retried and dead-lettered records (headers.go) and the one error
// classifier (Classify, errors.go).
//
// It imports schema, ingest/idstate and internal/ only. It must not import
// hierarchy (chains come through the Resolver interface), restate (which
// builds on ingest), ingest/pgledger (which implements ingest's Ledger) or
// cmd/; internal/imports checks these rules for every package.
package ingest
