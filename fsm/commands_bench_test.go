package fsm

import "testing"

// BenchmarkCommandCodec measures a placement of 10,000 guilds through
// Command.Encode (the leader) and DecodeCommand (every node's apply).
func BenchmarkCommandCodec(b *testing.B) {
	ids := make([]uint64, 10000)
	for i := range ids {
		ids[i] = uint64(1_100_000_000_000+i)<<22 | uint64(i%4096)
	}
	c := Command{Type: CmdPlaceGuilds, GuildIDs: ids, At: 1}
	enc, _ := c.Encode()
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Encode(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecodeCommand(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(len(enc)), "bytes")
}
