package bench

import "testing"

func TestCompareAtLeast(t *testing.T) {
	r := CompareAtLeast("4 cards", "Mbit/s", Value(72), Value(80), 0.9)
	if r.Ratio != 0.9 || r.Pass == nil || !*r.Pass || r.Target != ">= 0.9x reference" || r.Ref == nil || r.Ref.Value != 80 {
		t.Errorf("72 vs 80 against 0.9x: %+v", r)
	}
	if r := CompareAtLeast("4 cards", "Mbit/s", Value(71.9), Value(80), 0.9); *r.Pass {
		t.Error("0.899x passes a 0.9x target")
	}
	if r := CompareAtLeast("x", "Mbit/s", Value(1), Value(0), 0.9); *r.Pass || r.Ratio != 0 {
		t.Errorf("a zero reference passes: %+v", r)
	}
}
