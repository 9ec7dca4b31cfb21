package ingest

// maxNestingDepth is encoding/json's limit of nested arrays and objects:
// deeper JSON is not valid to json.Valid.
const maxNestingDepth = 10000

// validJSON reports whether b is exactly what encoding/json.Valid accepts:
// one JSON value (RFC 8259), whitespace around it, at most 10000 arrays and
// objects deep, strings checked for escapes and control characters but not
// for UTF-8. json.Valid steps a state machine through a function call per
// byte; this walks the bytes directly, several times faster. The decoder
// runs its endOfValue on every field of every record. FuzzValidJSON holds
// validJSON and json.Valid equal.
func validJSON(b []byte) bool {
	i := endOfValue(b, skipSpace(b, 0), 0)
	return i >= 0 && skipSpace(b, i) == len(b)
}

// endOfValue returns the index after the JSON value at i, or -1 if there
// is no valid one there. outer is how many containers enclose it, for the
// nesting limit.
func endOfValue(b []byte, i, outer int) int {
	var stackBuf [64]byte
	open := stackBuf[:0] // '{' or '[' per open container, innermost last
	for {
		// A value starts at i.
		if i >= len(b) {
			return -1
		}
		switch c := b[i]; c {
		case '{', '[':
			open = append(open, c)
			if outer+len(open) > maxNestingDepth {
				return -1
			}
			i = skipSpace(b, i+1)
			if i < len(b) && b[i] == c+2 { // '}' or ']': empty
				open = open[:len(open)-1]
				i++
				break
			}
			if c == '{' {
				if i = objectKey(b, i); i < 0 {
					return -1
				}
			}
			continue
		case '"':
			if i = endOfString(b, i); i < 0 {
				return -1
			}
		case 't':
			if i = endOfLiteral(b, i, "true"); i < 0 {
				return -1
			}
		case 'f':
			if i = endOfLiteral(b, i, "false"); i < 0 {
				return -1
			}
		case 'n':
			if i = endOfLiteral(b, i, "null"); i < 0 {
				return -1
			}
		default:
			if i = endOfNumber(b, i); i < 0 {
				return -1
			}
		}
		// A value ended before i: close containers until one goes on.
		for {
			if len(open) == 0 {
				return i
			}
			if i = skipSpace(b, i); i >= len(b) {
				return -1
			}
			top := open[len(open)-1]
			if b[i] == top+2 {
				open = open[:len(open)-1]
				i++
				continue
			}
			if b[i] != ',' {
				return -1
			}
			i = skipSpace(b, i+1)
			if top == '{' {
				if i = objectKey(b, i); i < 0 {
					return -1
				}
			}
			break
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// objectKey returns the index of the value after the key and colon at i,
// or -1.
func objectKey(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = endOfString(b, i); i < 0 {
		return -1
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return -1
	}
	return skipSpace(b, i+1)
}

// stringByte classifies the bytes of a string: 0 ordinary, 1 the closing
// quote or an escape, 2 a control character (invalid).
var stringByte = func() (t [256]byte) {
	for c := range 0x20 {
		t[c] = 2
	}
	t['"'], t['\\'] = 1, 1
	return t
}()

// endOfString returns the index after the string whose quote is at i, or
// -1 if it is not a valid JSON string.
func endOfString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch stringByte[b[i]] {
		case 0:
			continue
		case 2:
			return -1
		}
		if b[i] == '"' {
			return i + 1
		}
		i++ // the escaped character
		if i >= len(b) {
			return -1
		}
		switch b[i] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			if i+4 >= len(b) {
				return -1
			}
			for _, h := range b[i+1 : i+5] {
				if !isHex(h) {
					return -1
				}
			}
			i += 4
		default:
			return -1
		}
	}
	return -1
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// endOfNumber returns the index after the number at i, or -1 if there is
// none: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func endOfNumber(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b) || !isDigit(b[i]):
		return -1
	case b[i] == '0':
		i++
	default:
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	return i
}

// endOfLiteral returns the index after lit at i, or -1.
func endOfLiteral(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}
