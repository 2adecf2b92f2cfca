package fsm

// decodeCommandFast reads, without reflection, a placement or removal in
// exactly the form Encode writes it ({"v":…,"type":…,"at":…,"guild_ids":[…]},
// no whitespace, plain strings): a placement carries up to 100,000 ids and
// every config node decodes every entry it applies. It reports false for
// anything else, which DecodeCommand then gives to encoding/json; when it
// accepts b, json.Unmarshal(b) yields the same Command
// (TestDecodeCommandFastReadsWhatEncodingJSONReads, FuzzDecodeCommandFast).
func decodeCommandFast(b []byte) (Command, bool) {
	c := cursor{b: b, ok: true}
	var cmd Command
	cmd.Version = int(c.intField(`{"v":`))
	cmd.Type = CommandType(c.strField(`,"type":`))
	cmd.At = c.intField(`,"at":`)
	c.lit(`,"guild_ids":[`)
	if !c.ok || len(b) < c.i {
		return Command{}, false
	}
	cmd.GuildIDs = make([]uint64, 0, (len(b)-c.i)/20+1)
	if !c.peek(`]`) {
		for c.ok {
			cmd.GuildIDs = append(cmd.GuildIDs, c.uint())
			if !c.peek(`,`) {
				break
			}
			c.lit(`,`)
		}
	}
	c.lit(`]}`)
	if !c.ok || c.i != len(b) {
		return Command{}, false
	}
	return cmd, true
}
