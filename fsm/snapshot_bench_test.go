package fsm

import (
	"bytes"
	"fmt"
	"testing"
)

func millionGuilds(b *testing.B) *State {
	s := New()
	if _, err := s.Apply(1, Command{Version: 1, Type: CmdInit, ShardCount: 64}); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 16; i++ {
		if _, err := s.Apply(uint64(2+i), Command{Version: 1, Type: CmdRegisterPod, Pod: &PodSpec{ID: fmt.Sprintf("gateway-%d", i), Ordinal: i, Addr: "127.0.0.1:1"}}); err != nil {
			b.Fatal(err)
		}
	}
	ids := make([]uint64, 0, 100_000)
	idx := uint64(100)
	for i := 0; i < 1_000_000; i++ {
		ids = append(ids, uint64(1420070400000+i*37)<<22|uint64(i%4096))
		if len(ids) == cap(ids) {
			if _, err := s.Apply(idx, Command{Version: 1, Type: CmdPlaceGuilds, GuildIDs: ids}); err != nil {
				b.Fatal(err)
			}
			idx++
			ids = ids[:0]
		}
	}
	return s
}

// BenchmarkSnapshotMillionGuilds measures encode and decode of a state with
// 1,000,000 guilds (make bench prints it).
func BenchmarkSnapshotMillionGuilds(b *testing.B) {
	s := millionGuilds(b)
	var buf bytes.Buffer
	b.Run("write", func(b *testing.B) {
		for b.Loop() {
			buf.Reset()
			if err := s.WriteSnapshot(&buf); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(buf.Len())/1e6, "MB")
	})
	b.Run("read", func(b *testing.B) {
		for b.Loop() {
			if _, err := ReadSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkApplyPlace measures one command placing 10,000 new guilds on a
// state holding a million: ids after every existing one (new snowflakes, as
// the scale benchmark sends them) and ids spread over the whole range.
func BenchmarkApplyPlace(b *testing.B) {
	for _, spread := range []bool{false, true} {
		b.Run(fmt.Sprintf("spread=%v", spread), func(b *testing.B) {
			s := millionGuilds(b)
			idx, n := uint64(1000), 0
			ids := make([]uint64, 10_000)
			r := uint64(88172645463325252)
			for b.Loop() {
				for i := range ids {
					if spread {
						r ^= r << 13
						r ^= r >> 7
						r ^= r << 17
						ids[i] = r>>1 | 1
					} else {
						ids[i] = uint64(1420070400000+37_000_000+n*37)<<22 | uint64(n%4096)
						n++
					}
				}
				if _, err := s.Apply(idx, Command{Version: CommandVersion, Type: CmdPlaceGuilds, GuildIDs: ids}); err != nil {
					b.Fatal(err)
				}
				idx++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(ids)), "ns/guild")
		})
	}
}
