package schema

import (
	"errors"
	"math"
	"math/big"
	"math/bits"
	"strconv"
)

// Errors returned by ParseDecimal and ParseInt.
var (
	ErrNumberSyntax    = errors.New("not a number")
	ErrTooManyDecimals = errors.New("more decimal places than the measure's scale")
	ErrNumberRange     = errors.New("number out of range")
)

// pow10 holds 10^0 … 10^18.
var pow10 = func() [19]int64 {
	var p [19]int64
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return p
}()

// MaxUnits is the largest magnitude a Decimal(18, s) column holds, in units.
const MaxUnits = 999_999_999_999_999_999

// ParseDecimal parses a JSON number literal (optionally from a JSON string,
// already unquoted) into an exact count of 10^-scale units. It never goes
// through a float: "129.90" at scale 4 is 1299000. Non-zero digits past the
// scale are ErrTooManyDecimals (rounding money silently is worse than refusing
// it); magnitudes past 18 digits are ErrNumberRange.
func ParseDecimal(s []byte, scale int) (int64, error) {
	var buf [maxNumberBytes]byte
	neg, digits, exp, err := splitNumber(s, &buf)
	if err != nil {
		return 0, err
	}
	// value = digits × 10^(exp); units = digits × 10^(exp+scale).
	shift := exp + scale
	// Strip trailing zeros that a negative shift would cut off.
	for shift < 0 && len(digits) > 0 && digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
		shift++
	}
	// Leading zeros carry no value.
	for len(digits) > 0 && digits[0] == '0' {
		digits = digits[1:]
	}
	if len(digits) == 0 {
		return 0, nil
	}
	if shift < 0 {
		return 0, ErrTooManyDecimals
	}
	if len(digits)+shift > MaxDecimalDigits {
		return 0, ErrNumberRange
	}
	var v int64
	for _, c := range digits {
		v = v*10 + int64(c-'0')
	}
	v *= pow10[shift]
	if neg {
		v = -v
	}
	return v, nil
}

// ParseInt parses a JSON number literal whose value is an exact integer that
// fits an int64 ("3", "3.0" and "3e2" are integers; "3.5" is not).
func ParseInt(s []byte) (int64, error) {
	var buf [maxNumberBytes]byte
	neg, digits, exp, err := splitNumber(s, &buf)
	if err != nil {
		return 0, err
	}
	for exp < 0 && len(digits) > 0 && digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
		exp++
	}
	for len(digits) > 0 && digits[0] == '0' {
		digits = digits[1:]
	}
	if len(digits) == 0 {
		return 0, nil
	}
	if exp < 0 {
		return 0, ErrNumberSyntax
	}
	if len(digits)+exp > 19 {
		return 0, ErrNumberRange
	}
	var u uint64
	for _, c := range digits {
		u = u*10 + uint64(c-'0')
	}
	for i := 0; i < exp; i++ {
		hi, lo := bits.Mul64(u, 10)
		if hi != 0 {
			return 0, ErrNumberRange
		}
		u = lo
	}
	if neg {
		if u > 1<<63 {
			return 0, ErrNumberRange
		}
		return int64(-u), nil //nolint:gosec // range checked above
	}
	if u > math.MaxInt64 {
		return 0, ErrNumberRange
	}
	return int64(u), nil
}

// maxNumberBytes is the longest number literal parsed; longer is a syntax
// error.
const maxNumberBytes = 64

// splitNumber splits a JSON number into sign, significant digits (integer and
// fraction concatenated, in buf: the caller's, so it need not be allocated)
// and a base-10 exponent applying to those digits.
func splitNumber(s []byte, buf *[maxNumberBytes]byte) (neg bool, digits []byte, exp int, err error) {
	if len(s) == 0 || len(s) > maxNumberBytes {
		return false, nil, 0, ErrNumberSyntax
	}
	i := 0
	if s[0] == '-' {
		neg = true
		i++
	}
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	intPart := s[start:i]
	if len(intPart) == 0 || (len(intPart) > 1 && intPart[0] == '0') {
		return false, nil, 0, ErrNumberSyntax
	}
	digits = append(buf[:0], intPart...)
	if i < len(s) && s[i] == '.' {
		i++
		fs := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == fs {
			return false, nil, 0, ErrNumberSyntax
		}
		digits = append(digits, s[fs:i]...)
		exp = -(i - fs)
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		es := i
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		ds := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == ds || i-ds > 4 {
			// More than 4 exponent digits can only mean an absurd magnitude
			// (or an absurd number of zeros); refuse before doing arithmetic.
			if i != ds {
				return false, nil, 0, ErrNumberRange
			}
			return false, nil, 0, ErrNumberSyntax
		}
		e, _ := strconv.Atoi(string(s[es:i]))
		exp += e
	}
	if i != len(s) {
		return false, nil, 0, ErrNumberSyntax
	}
	if exp > 1000 || exp < -1000 {
		return false, nil, 0, ErrNumberRange
	}
	return neg, digits, exp, nil
}

// FormatDecimal renders units at the given scale, e.g. (1299000, 4) → "129.9000".
func FormatDecimal(units int64, scale int) string {
	return FormatBigDecimal(big.NewInt(units), scale)
}

// FormatBigDecimal renders an arbitrary-size unit count at the given scale.
func FormatBigDecimal(units *big.Int, scale int) string {
	s := new(big.Int).Abs(units).String()
	for len(s) <= scale {
		s = "0" + s
	}
	if scale > 0 {
		s = s[:len(s)-scale] + "." + s[len(s)-scale:]
	}
	if units.Sign() < 0 {
		s = "-" + s
	}
	return s
}

// Sum128 is an overflow-free accumulator of int64 values (a two's-complement
// 128-bit integer). A batch may sum many large amounts; Decimal(38, s) holds
// the result, int64 may not.
type Sum128 struct {
	Hi int64
	Lo uint64
}

// Add adds v.
func (s *Sum128) Add(v int64) {
	var carry uint64
	s.Lo, carry = bits.Add64(s.Lo, uint64(v), 0) //nolint:gosec // two's complement on purpose
	ext := int64(0)
	if v < 0 {
		ext = -1
	}
	s.Hi += ext + int64(carry) //nolint:gosec // carry is 0 or 1
}

// AddSum adds another accumulator.
func (s *Sum128) AddSum(o Sum128) {
	var carry uint64
	s.Lo, carry = bits.Add64(s.Lo, o.Lo, 0)
	s.Hi += o.Hi + int64(carry) //nolint:gosec // carry is 0 or 1
}

// Big returns the value as a big.Int.
func (s Sum128) Big() *big.Int {
	hi := big.NewInt(s.Hi)
	hi.Lsh(hi, 64)
	return hi.Add(hi, new(big.Int).SetUint64(s.Lo))
}

// Int64 returns the value and true when it fits an int64.
func (s Sum128) Int64() (int64, bool) {
	v := int64(s.Lo) //nolint:gosec // two's complement on purpose
	if (s.Hi == 0 && v >= 0) || (s.Hi == -1 && v < 0) {
		return v, true
	}
	return 0, false
}

// Sum128FromBig converts v, which must fit 128 bits (a Decimal(38, s)
// holds at most 127), into a Sum128.
func Sum128FromBig(v *big.Int) Sum128 {
	var lo, hi big.Int
	mask := new(big.Int).SetUint64(math.MaxUint64)
	lo.And(v, mask) // two's complement view for negatives
	hi.Rsh(v, 64)   // arithmetic shift: floor division
	return Sum128{Hi: hi.Int64(), Lo: lo.Uint64()}
}

// Neg returns -s.
func (s Sum128) Neg() Sum128 {
	lo, borrow := bits.Sub64(0, s.Lo, 0)
	return Sum128{Hi: -s.Hi - int64(borrow), Lo: lo} //nolint:gosec // borrow is 0 or 1
}

// IsZero reports whether the sum is zero.
func (s Sum128) IsZero() bool { return s.Hi == 0 && s.Lo == 0 }
