package idstate

import "errors"

// Sentinel errors of the package.
var (
	// ErrLocked means the directory is held by another Store, in this
	// process or another: one directory serves one process.
	ErrLocked = errors.New("idstate: directory in use by another store")
	// ErrLayout means the directory was written with another
	// Options.Segment; its segment numbers would be misread.
	ErrLayout = errors.New("idstate: directory written with another segment width")
	// ErrClosed means the Store was closed.
	ErrClosed = errors.New("idstate: store closed")
	// ErrInvalidEntry means an entry cannot be claimed as given (id length,
	// offset order, time before 1970); the message names the offset.
	ErrInvalidEntry = errors.New("idstate: invalid entry")
)
