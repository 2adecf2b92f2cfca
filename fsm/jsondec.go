package fsm

import (
	"bytes"
	"strconv"
)

// ParseEventJSON reads one event in exactly the form AppendEventJSON writes
// by hand (a guild event, or any event without a pod, shard or config node,
// with plain strings) from the start of b, without reflection. It reports
// how many bytes it read, or ok false for anything else — another field
// order, whitespace, an escape, a pod event — which the caller then gives to
// encoding/json. When it accepts b[:n], json.Unmarshal(b[:n]) yields the same
// Event (tests and a fuzz target hold it to that), so the two paths never
// disagree on what a stream said.
func ParseEventJSON(b []byte, e *Event) (n int, ok bool) {
	c := cursor{b: b, ok: true}
	var ev Event
	ev.Revision = c.uintField(`{"revision":`)
	ev.Type = EventType(c.strField(`,"type":`))
	ev.At = c.intField(`,"at":`)
	ev.Cause = CommandType(c.strField(`,"cause":`))
	if c.peek(`,"shard_count":`) {
		ev.ShardCount = int(c.intField(`,"shard_count":`))
		if ev.ShardCount == 0 {
			return 0, false // omitempty never writes 0
		}
	}
	if c.peek(`,"guild":`) {
		c.lit(`,"guild":`)
		g := new(Guild)
		c.guild(g)
		ev.Guild = g
	}
	if c.peek(`,"reason":`) {
		if ev.Reason = c.strField(`,"reason":`); ev.Reason == "" {
			return 0, false
		}
	}
	c.lit(`}`)
	if !c.ok {
		return 0, false
	}
	*e = ev
	return c.i, true
}

// cursor reads the canonical encoding; any mismatch clears ok for good.
type cursor struct {
	b  []byte
	i  int
	ok bool
}

func (c *cursor) peek(lit string) bool {
	return c.ok && bytes.HasPrefix(c.b[c.i:], []byte(lit))
}

func (c *cursor) lit(lit string) {
	if !c.peek(lit) {
		c.ok = false
		return
	}
	c.i += len(lit)
}

// digits reads a JSON integer's digits (no sign, no leading zero but "0").
func (c *cursor) digits() []byte {
	if !c.ok {
		return nil
	}
	j := c.i
	for j < len(c.b) && c.b[j] >= '0' && c.b[j] <= '9' {
		j++
	}
	d := c.b[c.i:j]
	if len(d) == 0 || len(d) > 1 && d[0] == '0' {
		c.ok = false
		return nil
	}
	c.i = j
	return d
}

func (c *cursor) uint() uint64 {
	d := c.digits()
	if !c.ok {
		return 0
	}
	if len(d) < 20 { // 19 digits are below 2^64
		var v uint64
		for _, x := range d {
			v = v*10 + uint64(x-'0')
		}
		return v
	}
	v, err := strconv.ParseUint(string(d), 10, 64)
	if err != nil {
		c.ok = false
	}
	return v
}

func (c *cursor) int() int64 {
	neg := c.ok && c.i < len(c.b) && c.b[c.i] == '-'
	if neg {
		c.i++
	}
	d := c.digits()
	if !c.ok {
		return 0
	}
	s := string(d)
	if neg {
		s = "-" + s
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		c.ok = false
	}
	return v
}

// str reads a quoted string of plain characters (see plain).
func (c *cursor) str() string {
	c.lit(`"`)
	if !c.ok {
		return ""
	}
	j := c.i
	for j < len(c.b) && c.b[j] != '"' {
		if ch := c.b[j]; ch < 0x20 || ch > 0x7e || ch == '\\' {
			c.ok = false
			return ""
		}
		j++
	}
	if j == len(c.b) {
		c.ok = false
		return ""
	}
	s := internJSON(c.b[c.i:j])
	c.i = j + 1
	return s
}

func (c *cursor) uintField(key string) uint64 { c.lit(key); return c.uint() }
func (c *cursor) intField(key string) int64   { c.lit(key); return c.int() }
func (c *cursor) strField(key string) string  { c.lit(key); return c.str() }

func (c *cursor) guild(g *Guild) {
	c.lit(`{"id":"`)
	g.ID = c.uint()
	c.lit(`"`)
	g.Owner = c.strField(`,"owner":`)
	g.State = GuildState(c.strField(`,"state":`))
	g.Epoch = c.uintField(`,"epoch":`)
	if c.peek(`,"migration":`) {
		c.lit(`,"migration":`)
		m := new(Migration)
		m.From = c.strField(`{"from":`)
		m.To = c.strField(`,"to":`)
		m.Epoch = c.uintField(`,"epoch":`)
		m.Phase = c.strField(`,"phase":`)
		m.StartedAt = c.intField(`,"started_at":`)
		if c.peek(`,"failover":true`) {
			c.lit(`,"failover":true`)
			m.Failover = true
		}
		if c.peek(`,"loss_window_ms":`) {
			if m.LossWindowMs = c.intField(`,"loss_window_ms":`); m.LossWindowMs == 0 {
				c.ok = false
			}
		}
		c.lit(`}`)
		g.Migration = m
	}
	g.Revision = c.uintField(`,"revision":`)
	c.lit(`}`)
}

// internJSON returns the few strings a stream repeats a million times
// (states, event types, causes) without allocating; others are copied.
func internJSON(b []byte) string {
	switch string(b) {
	case "":
		return ""
	case string(GuildActive):
		return string(GuildActive)
	case string(GuildMigrating):
		return string(GuildMigrating)
	case string(EventGuild):
		return string(EventGuild)
	case string(CmdPlaceGuilds):
		return string(CmdPlaceGuilds)
	}
	return string(b)
}

// ParseGuildJSON reads one guild in the form AppendGuildJSON writes by hand
// from the start of b (see ParseEventJSON for the contract).
func ParseGuildJSON(b []byte, g *Guild) (n int, ok bool) {
	c := cursor{b: b, ok: true}
	var v Guild
	c.guild(&v)
	if !c.ok {
		return 0, false
	}
	*g = v
	return c.i, true
}
