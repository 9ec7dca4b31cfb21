package hierarchy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Errors a hierarchy change can fail with. Each one is a refusal of the
// change, not a fault: nothing was written, retrying will not help, and a CLI
// prints the message and exits 1. The store wraps them with the database's
// own message, so test with errors.Is.
var (
	// ErrCycle: the move would make an entity its own ancestor.
	ErrCycle = errors.New("hierarchy: change would create a cycle")
	// ErrUnknownParent: the parent id is not in canopy.entities.
	ErrUnknownParent = errors.New("hierarchy: unknown parent")
	// ErrClosedParent: the new parent is closed and cannot take children.
	ErrClosedParent = errors.New("hierarchy: parent is closed")
	// ErrNotFound: the entity id is not in canopy.entities.
	ErrNotFound = errors.New("hierarchy: entity not found")
	// ErrExists: Create named an id that is already taken.
	ErrExists = errors.New("hierarchy: entity already exists")
	// ErrDeleteRefused: entities are never deleted, only closed, so that
	// history and past rollups keep their meaning.
	ErrDeleteRefused = errors.New("hierarchy: entities cannot be deleted, close them instead")
	// ErrFutureChange: the effective time lies in the future; the hierarchy
	// has no scheduled changes. (A back-dated change is allowed: it corrects
	// the history, see schema/postgres/0002_backdated_changes.sql.)
	ErrFutureChange = errors.New("hierarchy: a change cannot take effect in the future")
	// ErrBadStatus: a status name other than active, suspended, closed.
	ErrBadStatus = errors.New("hierarchy: bad status")
	// ErrInvalidImport: the import file breaks a rule; nothing was written.
	ErrInvalidImport = errors.New("hierarchy: invalid import")
	// ErrTooDeep: the change would make an ancestor chain (the entity
	// included) longer than MaxDepth, now or, for an insert or a back-dated
	// move, somewhere in the history it covers
	// (schema/postgres/0107_guards.sql).
	ErrTooDeep = errors.New("hierarchy: ancestor chain too long")
	// ErrNameTooLong: an entity name longer than MaxNameLength characters.
	ErrNameTooLong = errors.New("hierarchy: name too long")
)

// MaxNameLength is the longest entity name, in characters, that PostgreSQL
// accepts (constraint entities_name_length, schema/postgres/0107_guards.sql).
const MaxNameLength = 256

// SQLSTATEs raised by the triggers in schema/postgres/0001_hierarchy.sql.
const (
	codeCycle        = "CN001"
	codeClosedParent = "CN002"
	codeNoParent     = "CN003"
	codeDelete       = "CN004"
	codeFuture       = "CN008"

	codeForeignKey = "23503"
	codeUnique     = "23505"
	codeCheck      = "23514"
)

// Constraint names of the guards in schema/postgres/0107_guards.sql.
const (
	constraintDepth = "entities_max_depth"
	constraintName  = "entities_name_length"
)

// classify maps a PostgreSQL refusal to its sentinel, keeping the server's
// message (which names the entities involved). Other errors pass unchanged.
func classify(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	var sentinel error
	switch pgErr.Code {
	case codeCycle:
		sentinel = ErrCycle
	case codeClosedParent:
		sentinel = ErrClosedParent
	case codeNoParent:
		sentinel = ErrUnknownParent
	case codeDelete:
		sentinel = ErrDeleteRefused
	case codeFuture:
		sentinel = ErrFutureChange
	case codeForeignKey:
		sentinel = ErrUnknownParent
	case codeCheck:
		switch pgErr.ConstraintName {
		case constraintDepth:
			sentinel = ErrTooDeep
		case constraintName:
			return fmt.Errorf("%w: at most %d characters (%s)", ErrNameTooLong, MaxNameLength, pgErr.Message)
		default:
			return err
		}
	case codeUnique:
		if pgErr.TableName != "entities" {
			return err
		}
		return ErrExists
	default:
		return err
	}
	return fmt.Errorf("%w: %s", sentinel, strings.TrimPrefix(pgErr.Message, "canopy: "))
}
