package schema

import (
	"errors"
	"math"
	"math/big"
	"testing"
)

func TestParseDecimal(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
		err  error
	}{
		{"integer", "129", 1290000, nil},
		{"two places", "129.90", 1299000, nil},
		{"four places", "0.0001", 1, nil},
		{"negative", "-5.5", -55000, nil},
		{"trailing zeros past scale", "1.000000", 10000, nil},
		{"exponent", "1.5e2", 1500000, nil},
		{"negative exponent", "15e-4", 15, nil},
		{"zero", "0", 0, nil},
		{"negative zero", "-0.0", 0, nil},
		{"max", "99999999999999.9999", 999999999999999999, nil},
		{"too many places", "0.00001", 0, ErrTooManyDecimals},
		{"too large", "100000000000000", 0, ErrNumberRange},
		{"huge exponent", "1e400", 0, ErrNumberRange},
		{"absurd exponent", "1e99999", 0, ErrNumberRange},
		{"tiny exponent", "1e-400", 0, ErrTooManyDecimals},
		{"leading zero", "01", 0, ErrNumberSyntax},
		{"empty", "", 0, ErrNumberSyntax},
		{"dot only", "1.", 0, ErrNumberSyntax},
		{"plus sign", "+1", 0, ErrNumberSyntax},
		{"NaN", "NaN", 0, ErrNumberSyntax},
		{"spaces", " 1", 0, ErrNumberSyntax},
		{"hex", "0x10", 0, ErrNumberSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDecimal([]byte(tt.in), 4)
			if !errors.Is(err, tt.err) {
				t.Fatalf("ParseDecimal(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			if err == nil && got != tt.want {
				t.Fatalf("ParseDecimal(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseInt(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
		err  error
	}{
		{"plain", "42", 42, nil},
		{"max", "9223372036854775807", math.MaxInt64, nil},
		{"min", "-9223372036854775808", math.MinInt64, nil},
		{"past max", "9223372036854775808", 0, ErrNumberRange},
		{"exact float", "3.0", 3, nil},
		{"exponent", "3e2", 300, nil},
		{"fraction", "3.5", 0, ErrNumberSyntax},
		{"huge", "1e30", 0, ErrNumberRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseInt([]byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("ParseInt(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			if err == nil && got != tt.want {
				t.Fatalf("ParseInt(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestSum128(t *testing.T) {
	var s Sum128
	for i := 0; i < 4; i++ {
		s.Add(math.MaxInt64)
	}
	s.Add(-1)
	s.Add(math.MinInt64)
	// 4*(2^63-1) - 1 - 2^63 = 3*2^63 - 5
	if got, want := s.Big().String(), "27670116110564327419"; got != want {
		t.Fatalf("sum = %s, want %s", got, want)
	}
	if got := FormatBigDecimal(s.Big(), 4); got != "2767011611056432.7419" {
		t.Fatalf("format = %s", got)
	}
	if _, ok := s.Int64(); ok {
		t.Fatal("a sum past int64 reported as fitting")
	}
	var neg Sum128
	neg.Add(-5)
	if v, ok := neg.Int64(); !ok || v != -5 {
		t.Fatalf("Int64() = %d, %v", v, ok)
	}
	if neg.Big().Int64() != -5 || FormatDecimal(-5, 4) != "-0.0005" {
		t.Fatalf("negative sums wrong: %s %s", neg.Big(), FormatDecimal(-5, 4))
	}
}

func TestMeasuresValidate(t *testing.T) {
	tests := []struct {
		name string
		ms   Measures
		ok   bool
	}{
		{"default", DefaultMeasures(), true},
		{"none", Measures{}, false},
		{"reserved", Measures{{Name: "events", Kind: KindInt64}}, false},
		{"bad name", Measures{{Name: "Amount", Kind: KindInt64}}, false},
		{"twice", Measures{{Name: "a", Kind: KindInt64}, {Name: "a", Kind: KindInt64}}, false},
		{"bad kind", Measures{{Name: "a", Kind: "float"}}, false},
		{"int with scale", Measures{{Name: "a", Kind: KindInt64, Scale: 2}}, false},
		{"decimal default scale", Measures{{Name: "a", Kind: KindDecimal}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ms.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestSum128NegAndFromBig(t *testing.T) {
	vals := []string{"0", "1", "-1", "9223372036854775807", "-9223372036854775808",
		"27670116110564327419", "-27670116110564327419", "170141183460469231731687303715884105727",
		"-170141183460469231731687303715884105728"}
	for _, v := range vals {
		b, _ := new(big.Int).SetString(v, 10)
		s := Sum128FromBig(b)
		if s.Big().Cmp(b) != 0 {
			t.Errorf("Sum128FromBig(%s).Big() = %s", v, s.Big())
		}
		if v == "-170141183460469231731687303715884105728" {
			continue // its negation does not fit 128 bits
		}
		if got, want := s.Neg().Big(), new(big.Int).Neg(b); got.Cmp(want) != 0 {
			t.Errorf("Neg(%s) = %s", v, got)
		}
		sum := s
		sum.AddSum(s.Neg())
		if !sum.IsZero() {
			t.Errorf("%s + -%s = %s", v, v, sum.Big())
		}
	}
}
