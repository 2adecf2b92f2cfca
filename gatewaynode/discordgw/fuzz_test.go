package discordgw

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Run with
//
//	go test -run '^$' -fuzz '^FuzzReadFrame$' -fuzztime 10s ./gatewaynode/discordgw/

// wsFrame is one server-to-client websocket frame (unmasked).
func wsFrame(fin bool, opcode byte, payload []byte) []byte {
	b := []byte{opcode}
	if fin {
		b[0] |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n < 1<<16:
		b = append(b, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

func closeFrame(code uint16, text string) []byte {
	return wsFrame(true, websocket.CloseMessage, append(binary.BigEndian.AppendUint16(nil, code), text...))
}

func zlibOf(b []byte) []byte {
	var buf bytes.Buffer
	zw := zlib.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// gatewayConn is a conn whose websocket has completed the client handshake
// over an in-memory pipe; the fake gateway then writes wire, byte for byte,
// and hangs up. Cleanup waits for the fake's goroutine.
func gatewayConn(t *testing.T, wire []byte) *conn {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer server.Close()
		req, err := http.ReadRequest(bufio.NewReader(server))
		if err != nil {
			return
		}
		h := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		_, err = io.WriteString(server, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+
			base64.StdEncoding.EncodeToString(h[:])+"\r\n\r\n")
		if err == nil {
			_, _ = server.Write(wire)
		}
	}()
	d := websocket.Dialer{NetDialContext: func(context.Context, string, string) (net.Conn, error) { return client, nil }, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial("ws://gateway.test/?v=10&encoding=json", nil)
	if err != nil {
		client.Close()
		<-done
		t.Fatalf("handshake: %v", err)
	}
	t.Cleanup(func() {
		ws.Close()
		<-done
	})
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	return &conn{ws: ws}
}

// How FuzzReadFrame sends the fuzzer's data.
const (
	frameText      = iota // one text frame
	frameZlib             // one binary frame: the data as a zlib stream (payload compression)
	frameZlibFlip         // the zlib stream with one byte changed
	frameZlibCut          // the zlib stream cut short
	frameBinaryRaw        // one binary frame of the data itself (no zlib)
	frameFragments        // one text message in two frames (a continuation)
	frameWire             // the data is the raw wire after the handshake
	frameKinds
)

type readResult struct {
	p   payload
	err error
}

// FuzzReadFrame fuzzes the gateway frame decoder (conn.read: the websocket
// message, zlib inflation of binary frames, then the {op,d,s,t} payload)
// over a real websocket client reading from an in-memory fake gateway.
// Properties:
//
//   - nothing panics, and reading ends (with an error) once the gateway
//     hangs up;
//   - bad frames give errors: a payload that is not a JSON object of the
//     payload's shape, a binary frame that is not a whole zlib stream (cut
//     short anywhere), a corrupted one unless the change is a no-op;
//   - a zlib-compressed payload, and one split over a continuation frame,
//     decode exactly as the same bytes in one text frame;
//   - the close frame the gateway sends next is reported as a close error
//     with its code, and classify ends the shard for good exactly for the
//     fatal codes (4004, 4010–4014) and identifies afresh for 4007/4009.
func FuzzReadFrame(f *testing.F) {
	for _, p := range []string{
		`{"op":10,"d":{"heartbeat_interval":41250},"s":null,"t":null}`,
		`{"op":0,"d":{"v":10,"session_id":"abc","resume_gateway_url":"wss://gateway-us-east1-b.discord.gg","user":{"id":"1"}},"s":1,"t":"READY"}`,
		`{"op":0,"d":{"id":"1100000000000000001","guild_id":"42","channel_id":"7","author":{"id":"8"},"content":"hi"},"s":2,"t":"MESSAGE_CREATE"}`,
		`{"op":11}`,
		`{"op":1,"d":null}`,
		`{"op":7,"d":null}`,
		`{"op":9,"d":false}`,
		`{"op":0,"s":3,"t":"RESUMED","d":{}}`,
		`{"op":"0"}`,
		`{"op":0,"s":-1,"t":"X","d":`,
		`[1,2]`,
		`null`,
		``,
	} {
		for kind := uint8(0); kind < frameWire; kind++ {
			f.Add(kind, []byte(p), uint16(len(p)/2), uint16(4000))
		}
	}
	hello := []byte(`{"op":10,"d":{"heartbeat_interval":41250}}`)
	wire := append(wsFrame(true, websocket.TextMessage, hello), wsFrame(true, websocket.BinaryMessage, zlibOf(hello))...)
	wire = append(wire, wsFrame(true, websocket.PingMessage, []byte("p"))...)
	f.Add(uint8(frameWire), append(wire, closeFrame(4004, "Authentication failed.")...), uint16(0), uint16(0))
	f.Add(uint8(frameWire), wsFrame(false, websocket.TextMessage, hello[:5]), uint16(0), uint16(0))
	f.Add(uint8(frameWire), []byte{0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint16(0), uint16(0))
	f.Add(uint8(frameZlib), bytes.Repeat([]byte(" "), 70000), uint16(0), uint16(4009))

	f.Fuzz(func(t *testing.T, kind uint8, data []byte, at uint16, code uint16) {
		kind %= frameKinds
		closeCode := []uint16{1000, 1001, 4000, 4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014, 4008}[int(code)%12]
		compressed := zlibOf(data)
		var wire []byte
		switch kind {
		case frameText:
			wire = wsFrame(true, websocket.TextMessage, data)
		case frameZlib:
			wire = wsFrame(true, websocket.BinaryMessage, compressed)
		case frameZlibFlip:
			c := append([]byte(nil), compressed...)
			c[int(at)%len(c)] ^= byte(code) | 1
			wire = wsFrame(true, websocket.BinaryMessage, c)
		case frameZlibCut:
			wire = wsFrame(true, websocket.BinaryMessage, compressed[:int(at)%len(compressed)])
		case frameBinaryRaw:
			wire = wsFrame(true, websocket.BinaryMessage, data)
		case frameFragments:
			k := int(at) % (len(data) + 1)
			wire = append(wsFrame(false, websocket.TextMessage, data[:k]), wsFrame(true, 0 /* continuation */, data[k:])...)
		case frameWire:
			wire = data
		}
		if kind != frameWire {
			wire = append(wire, closeFrame(closeCode, "bye")...)
		}
		c := gatewayConn(t, wire)

		if kind == frameWire {
			for i := 0; ; i++ {
				if _, err := c.read(); err != nil {
					if err.Error() == "" {
						t.Fatal("an error without a message")
					}
					break
				}
				if i > len(data) {
					t.Fatalf("%d payloads from %d bytes", i, len(data))
				}
			}
			return
		}

		p, err := c.read()
		var want readResult
		want.err = json.Unmarshal(data, &want.p)
		switch kind {
		case frameText, frameZlib, frameFragments:
			if (err == nil) != (want.err == nil) || !reflect.DeepEqual(p, want.p) && err == nil {
				t.Fatalf("kind %d: got %+v, %v; the same bytes as one text frame: %+v, %v", kind, p, err, want.p, want.err)
			}
		case frameZlibFlip:
			if err == nil && (want.err != nil || !reflect.DeepEqual(p, want.p)) {
				t.Fatalf("a corrupted zlib stream decoded to %+v, the original to %+v (%v)", p, want.p, want.err)
			}
		case frameZlibCut:
			if err == nil {
				t.Fatalf("a zlib stream cut at %d of %d bytes decoded to %+v", int(at)%len(compressed), len(compressed), p)
			}
		case frameBinaryRaw:
			zr, zerr := zlib.NewReader(bytes.NewReader(data))
			if zerr == nil {
				_, zerr = io.ReadAll(zr)
			}
			if err == nil && zerr != nil {
				t.Fatalf("a binary frame that is not a zlib stream (%v) decoded to %+v", zerr, p)
			}
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				t.Fatalf("the frame was skipped: %v", err)
			}
		}

		// The close frame that follows.
		_, err = c.read()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != int(closeCode) {
			t.Fatalf("after the close frame %d: %v", closeCode, err)
		}
		o := c.classify(modeResume, true, err)
		var cerr *CloseError
		if !errors.As(o.err, &cerr) || cerr.Code != int(closeCode) {
			t.Fatalf("outcome error %v does not carry close code %d", o.err, closeCode)
		}
		if o.fatal != fatalCloseCode(int(closeCode)) || (!o.fatal && (o.next == modeIdentify) != (closeCode == 4007 || closeCode == 4009)) {
			t.Fatalf("close %d: outcome %+v", closeCode, o)
		}
	})
}

// FuzzDispatchSequence feeds decoded dispatches (READY, RESUMED, others;
// sequence numbers that step on, repeat, go back, jump or are not
// positive) and acknowledgements to a Shard's dispatch handling, as the read
// loop does. Each 3 input bytes are one step: what, a sequence delta, a
// session. Properties (the package invariants):
//
//   - order and no duplicates: within a session, the queued dispatches
//     other than RESUMED have strictly increasing sequence numbers, and
//     every dispatch with a sequence number beyond the last one received is
//     queued, in order;
//   - RESUMED is always queued;
//   - a READY without a session id is an error and changes nothing; a
//     READY that starts a session is queued and starts it (its sequence
//     numbers restart);
//   - the checkpoint is an acknowledged position only: never beyond the
//     last received dispatch, never backwards within a session.
func FuzzDispatchSequence(f *testing.F) {
	f.Add([]byte{0, 1, 1, 2, 1, 0, 2, 1, 0, 4, 0, 0, 2, 0, 0, 2, 255, 0, 1, 3, 0})
	f.Add([]byte{0, 1, 1, 2, 5, 0, 3, 0, 0, 2, 1, 0, 0, 1, 2, 2, 1, 0, 4, 1, 0})
	f.Add([]byte{0, 0, 1, 0, 1, 0, 2, 1, 0})              // READY at seq 0, READY without a session
	f.Add([]byte{2, 1, 0, 2, 200, 0, 1, 100, 0, 4, 0, 0}) // before any READY; RESUMED back in time
	f.Fuzz(func(t *testing.T, script []byte) {
		s := &Shard{log: slog.New(slog.DiscardHandler), wake: make(chan struct{}, 1)}
		var seq int64
		lastQueued := map[string]int64{} // session → last non-RESUMED seq queued
		for i := 0; i+2 < len(script) && i < 3*200; i += 3 {
			what, delta, sess := script[i]%6, int64(int8(script[i+1])), script[i+2]%3
			seq += delta
			prevSession, prevLast, prevAcked := s.sessionID, s.lastSeq, s.acked
			prevQueue := len(s.queue)
			var typ string
			var d json.RawMessage
			switch what {
			case 0:
				typ = "READY"
				id := ""
				if sess > 0 {
					id = "session-" + strconv.Itoa(int(sess)) + "-" + strconv.Itoa(i)
				}
				d, _ = json.Marshal(map[string]any{"v": 10, "session_id": id, "resume_gateway_url": "wss://resume.test/" + strconv.Itoa(i)})
			case 1:
				typ, d = "RESUMED", json.RawMessage(`{}`)
			case 2, 3:
				typ, d = "MESSAGE_CREATE", json.RawMessage(`{"id":"`+strconv.Itoa(i)+`"}`)
			case 4:
				typ, d = "GUILD_CREATE", json.RawMessage(`{"id":"42"}`)
			case 5:
				s.Ack(seq)
				cp := s.Checkpoint()
				if cp.Seq > s.lastSeq || cp.Seq < prevAcked {
					t.Fatalf("step %d: Ack(%d) made the checkpoint %d (acked %d, last received %d)", i/3, seq, cp.Seq, prevAcked, s.lastSeq)
				}
				if seq <= s.lastSeq && cp.Seq != max(prevAcked, seq) {
					t.Fatalf("step %d: Ack(%d) of a received dispatch: checkpoint %d", i/3, seq, cp.Seq)
				}
				continue
			}
			est, err := s.handleDispatch(seq, typ, d)
			queued := s.queue[prevQueue:]
			if err != nil {
				if typ != "READY" || err.Error() == "" {
					t.Fatalf("step %d: %s #%d: %v", i/3, typ, seq, err)
				}
				if len(queued) != 0 || s.sessionID != prevSession || s.lastSeq != prevLast || s.acked != prevAcked {
					t.Fatalf("step %d: a refused READY changed the shard: queued %v, session %q→%q", i/3, queued, prevSession, s.sessionID)
				}
				continue
			}
			if len(queued) > 1 {
				t.Fatalf("step %d: one dispatch queued %d times", i/3, len(queued))
			}
			switch typ {
			case "READY":
				if len(queued) != 1 || !est || s.sessionID == prevSession && prevSession != "" {
					t.Fatalf("step %d: READY #%d of a new session: queued %v, established %v, session %q→%q", i/3, seq, queued, est, prevSession, s.sessionID)
				}
			case "RESUMED":
				if len(queued) != 1 || !est {
					t.Fatalf("step %d: RESUMED #%d: queued %v, established %v", i/3, seq, queued, est)
				}
			default:
				if est {
					t.Fatalf("step %d: %s established the session", i/3, typ)
				}
				if want := seq > prevLast; want != (len(queued) == 1) {
					t.Fatalf("step %d: %s #%d after #%d: queued %v", i/3, typ, seq, prevLast, queued)
				}
			}
			for _, q := range queued {
				if q.SessionID != s.sessionID || q.Seq != seq || q.Type != typ || !bytes.Equal(q.Data, d) {
					t.Fatalf("step %d: queued %+v for %s #%d of session %q", i/3, q, typ, seq, s.sessionID)
				}
				if typ == "RESUMED" {
					continue
				}
				if last, ok := lastQueued[q.SessionID]; ok && q.Seq <= last {
					t.Fatalf("step %d: %s #%d of session %q queued after #%d: out of order or a duplicate", i/3, typ, q.Seq, q.SessionID, last)
				}
				lastQueued[q.SessionID] = q.Seq
			}
			if cp := s.Checkpoint(); cp.Seq > s.lastSeq || cp.SessionID != s.sessionID {
				t.Fatalf("step %d: checkpoint %+v beyond the last received %d of session %q", i/3, cp, s.lastSeq, s.sessionID)
			}
		}
	})
}

func TestFuzzFrameHelpers(t *testing.T) {
	// The in-memory gateway speaks websocket: a text frame, a compressed
	// one and a close frame come out as the shard's reader expects.
	hello := []byte(`{"op":10,"d":{"heartbeat_interval":41250}}`)
	c := gatewayConn(t, append(append(wsFrame(true, websocket.TextMessage, hello), wsFrame(true, websocket.BinaryMessage, zlibOf(hello))...), closeFrame(4004, "no")...))
	for i := 0; i < 2; i++ {
		if p, err := c.read(); err != nil || p.Op != opHello || string(p.D) != `{"heartbeat_interval":41250}` {
			t.Fatalf("frame %d: %+v, %v", i, p, err)
		}
	}
	_, err := c.read()
	if o := c.classify(modeResume, true, err); !o.fatal {
		t.Fatalf("close 4004: %+v (%v)", o, err)
	}
	if got := fmt.Sprint(len(wsFrame(true, 1, make([]byte, 70000)))); got != "70010" {
		t.Fatalf("a 64-bit length frame is %s bytes", got)
	}
}

// TestReadyWithoutAPositiveSequenceIsRefusedWhole is the regression test
// of what FuzzDispatchSequence found: a READY with a sequence number of 0
// or less switched the shard to its session (session id, resume URL, seq
// and acknowledged seq reset, the previous session's checkpoint gone) and
// was then dropped as a replay (seq <= the just-reset last seq of 0): not
// delivered, not establishing the session, while the dispatches after it
// were delivered under the new session. Such a READY is now an error (the
// shard identifies afresh, as for a READY without a session id) and
// changes nothing.
func TestReadyWithoutAPositiveSequenceIsRefusedWhole(t *testing.T) {
	for _, seq := range []int64{0, -1} {
		s := &Shard{log: slog.New(slog.DiscardHandler), wake: make(chan struct{}, 1), sessionID: "old", resumeURL: "wss://old", lastSeq: 9, acked: 7}
		est, err := s.handleDispatch(seq, "READY", json.RawMessage(`{"session_id":"new","resume_gateway_url":"wss://new"}`))
		if err == nil || est {
			t.Fatalf("READY at seq %d: established %v, err %v; want an error", seq, est, err)
		}
		if cp := s.Checkpoint(); cp != (Checkpoint{SessionID: "old", Seq: 7, ResumeURL: "wss://old"}) || s.lastSeq != 9 || len(s.queue) != 0 {
			t.Fatalf("READY at seq %d changed the shard: checkpoint %+v, last seq %d, queued %v", seq, cp, s.lastSeq, s.queue)
		}
	}
	s := &Shard{log: slog.New(slog.DiscardHandler), wake: make(chan struct{}, 1)}
	if est, err := s.handleDispatch(1, "READY", json.RawMessage(`{"session_id":"new"}`)); err != nil || !est || len(s.queue) != 1 {
		t.Fatalf("READY at seq 1: established %v, err %v, queued %v", est, err, s.queue)
	}
}
