package fakediscord

import (
	"encoding/json"
	"sort"
	"strings"
)

// jsonIDs accepts one snowflake or an array of them (op 8 takes both).
type jsonIDs []uint64

func (j *jsonIDs) UnmarshalJSON(b []byte) error {
	var one jsonID
	if err := json.Unmarshal(b, &one); err == nil {
		*j = jsonIDs{uint64(one)}
		return nil
	}
	var many []jsonID
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*j = make(jsonIDs, len(many))
	for i, id := range many {
		(*j)[i] = uint64(id)
	}
	return nil
}

// membersPerChunk is how many members one GUILD_MEMBERS_CHUNK carries at most.
const membersPerChunk = 1000

// requestMembers answers op 8 REQUEST_GUILD_MEMBERS with GUILD_MEMBERS_CHUNK
// dispatches to the requesting session: the guild's members whose username
// starts with query (at most limit, 0 = all), or the members among user_ids
// (the others in not_found). Guilds of other shards are ignored. It returns
// false when the connection must end.
// https://discord.com/developers/docs/events/gateway-events#request-guild-members
func (s *Server) requestMembers(c *gwConn, d json.RawMessage) bool {
	var req struct {
		GuildID   jsonIDs `json:"guild_id"`
		Query     *string `json:"query"`
		Limit     int     `json:"limit"`
		Presences bool    `json:"presences"`
		UserIDs   jsonIDs `json:"user_ids"`
		Nonce     string  `json:"nonce"`
	}
	if err := json.Unmarshal(d, &req); err != nil || len(req.GuildID) == 0 || (req.Query == nil && req.UserIDs == nil) {
		s.closeConn(c, CloseDecodeError, "Error while decoding payload.")
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := c.sess
	if sess == nil {
		c.closeWithLocked(CloseNotAuthenticated, "Not authenticated.")
		return false
	}
	for _, gid := range req.GuildID {
		g, ok := s.guilds[gid]
		if !ok || ShardFor(gid, sess.shardCount) != sess.shardID {
			continue
		}
		var members []map[string]any
		var notFound []string
		if req.UserIDs != nil {
			for _, uid := range req.UserIDs {
				if g.isMember(uid) {
					members = append(members, s.memberLocked(g, uid))
				} else {
					notFound = append(notFound, idStr(uid))
				}
			}
		} else {
			ids := make([]uint64, 0, len(g.members))
			for uid := range g.members {
				ids = append(ids, uid)
			}
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			q := strings.ToLower(*req.Query)
			for _, uid := range ids {
				m := s.memberLocked(g, uid)
				name, _ := m["user"].(map[string]any)["username"].(string)
				if strings.HasPrefix(strings.ToLower(name), q) && (req.Limit <= 0 || len(members) < req.Limit) {
					members = append(members, m)
				}
			}
		}
		chunks := max(1, (len(members)+membersPerChunk-1)/membersPerChunk)
		for i := range chunks {
			part := members[min(i*membersPerChunk, len(members)):min((i+1)*membersPerChunk, len(members))]
			chunk := map[string]any{"guild_id": idStr(gid), "members": append([]map[string]any{}, part...),
				"chunk_index": i, "chunk_count": chunks}
			if req.Nonce != "" {
				chunk["nonce"] = req.Nonce
			}
			if i == 0 && len(notFound) > 0 {
				chunk["not_found"] = notFound
			}
			if req.Presences {
				chunk["presences"] = []any{}
			}
			raw, _ := json.Marshal(chunk)
			s.appendLocked(sess, "GUILD_MEMBERS_CHUNK", raw)
		}
	}
	return true
}
