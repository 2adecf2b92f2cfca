package fsm

import (
	"math/rand/v2"
	"testing"
)

// FuzzTableAgreesWithMap drives the same operations as the property test
// from the fuzzer's bytes, on a small configuration (merges, splits and
// compaction after a few operations), checking every id touched after each
// step and everything at the end. Bytes past the input read as zero.
func FuzzTableAgreesWithMap(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte("\x5a\x00\x07\x5c\x10\x20\x63\x05\x61\x00\x30\x02\x08\x01\x02\x03\xff\xfe\x60\x60"))
	seed := rand.New(rand.NewPCG(9, 9))
	for range 4 {
		b := make([]byte, 300)
		for i := range b {
			b[i] = byte(seed.IntN(256))
		}
		f.Add(b)
	}
	f.Fuzz(fuzzOps)
}

func fuzzOps(t *testing.T, data []byte) {
	pos := 0
	src := func(n int) int {
		// Two bytes per draw, so that ranges above 256 are reached.
		v := 0
		for range 2 {
			v <<= 8
			if pos < len(data) {
				v |= int(data[pos])
			}
			pos++
		}
		return v % n
	}
	r := rand.New(rand.NewPCG(uint64(len(data)), 1))
	for _, c := range []config{
		{maxSeg: 40, ovMin: 1, ovFrac: 2, compactSlack: 0},
		{maxSeg: 300, ovMin: 4, ovFrac: 4, compactSlack: 3},
	} {
		pos = 0
		o := &ops{src: src, m: newModel(c)}
		for step := 0; pos < len(data); step++ {
			if err := o.step(r); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		}
		if err := o.m.checkAll(o.knownOwners()); err != nil {
			t.Fatalf("at the end: %v", err)
		}
	}
}
