// Package imports holds the house's import rules, checked by its test: which
// of Canopy's packages each package may import (rooms and floors: nothing
// imports back up). It has no code of its own.
package imports
