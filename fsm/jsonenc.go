package fsm

import (
	"encoding/json"
	"strconv"
)

// The watch stream, /v1/snapshot and placements encode guilds by the
// million; encoding/json spends most of that time in reflection and buffer
// growth. AppendGuildJSON and AppendEventJSON write the same bytes
// encoding/json writes for the same value (tests hold them to it), by hand.
// A string that encoding/json would escape (quotes, backslashes, control
// characters, <, >, &, anything outside printable ASCII) sends the whole
// value to encoding/json, so the output never differs.

// plain reports whether encoding/json writes s between quotes unchanged.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func appendStr(dst []byte, key, s string) []byte {
	dst = append(dst, key...)
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

func appendUint(dst []byte, key string, v uint64) []byte {
	return strconv.AppendUint(append(dst, key...), v, 10)
}

func appendInt(dst []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(dst, key...), v, 10)
}

func guildPlain(g *Guild) bool {
	if !plain(g.Owner) || !plain(string(g.State)) {
		return false
	}
	m := g.Migration
	return m == nil || plain(m.From) && plain(m.To) && plain(m.Phase)
}

// appendGuild writes a guild whose strings are all plain.
func appendGuild(dst []byte, g *Guild) []byte {
	dst = append(dst, `{"id":"`...)
	dst = strconv.AppendUint(dst, g.ID, 10)
	dst = append(dst, '"')
	dst = appendStr(dst, `,"owner":`, g.Owner)
	dst = appendStr(dst, `,"state":`, string(g.State))
	dst = appendUint(dst, `,"epoch":`, g.Epoch)
	if m := g.Migration; m != nil {
		dst = appendStr(dst, `,"migration":{"from":`, m.From)
		dst = appendStr(dst, `,"to":`, m.To)
		dst = appendUint(dst, `,"epoch":`, m.Epoch)
		dst = appendStr(dst, `,"phase":`, m.Phase)
		dst = appendInt(dst, `,"started_at":`, m.StartedAt)
		if m.Failover {
			dst = append(dst, `,"failover":true`...)
		}
		if m.LossWindowMs != 0 {
			dst = appendInt(dst, `,"loss_window_ms":`, m.LossWindowMs)
		}
		dst = append(dst, '}')
	}
	dst = appendUint(dst, `,"revision":`, g.Revision)
	return append(dst, '}')
}

// AppendGuildJSON appends json.Marshal(g).
func AppendGuildJSON(dst []byte, g *Guild) ([]byte, error) {
	if guildPlain(g) {
		return appendGuild(dst, g), nil
	}
	b, err := json.Marshal(g)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

// AppendEventJSON appends json.Marshal(e). Guild events (the bulk of every
// stream) are written by hand; the others by encoding/json.
func AppendEventJSON(dst []byte, e *Event) ([]byte, error) {
	if e.Pod != nil || e.Shard != nil || e.ConfigNode != nil ||
		!plain(string(e.Type)) || !plain(string(e.Cause)) || !plain(e.Reason) ||
		e.Guild != nil && !guildPlain(e.Guild) {
		b, err := json.Marshal(e)
		if err != nil {
			return dst, err
		}
		return append(dst, b...), nil
	}
	dst = appendUint(dst, `{"revision":`, e.Revision)
	dst = appendStr(dst, `,"type":`, string(e.Type))
	dst = appendInt(dst, `,"at":`, e.At)
	dst = appendStr(dst, `,"cause":`, string(e.Cause))
	if e.ShardCount != 0 {
		dst = appendInt(dst, `,"shard_count":`, int64(e.ShardCount))
	}
	if e.Guild != nil {
		dst = appendGuild(append(dst, `,"guild":`...), e.Guild)
	}
	if e.Reason != "" {
		dst = appendStr(dst, `,"reason":`, e.Reason)
	}
	return append(dst, '}'), nil
}
