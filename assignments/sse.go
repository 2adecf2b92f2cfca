package assignments

import (
	"bufio"
	"io"
	"strings"
)

// SSEMessage is one Server-Sent Events message.
type SSEMessage struct {
	ID    string
	Event string
	Data  string
}

// SSEReader parses a text/event-stream (the subset the config nodes send:
// id, event, data; comments ignored).
type SSEReader struct {
	sc *bufio.Scanner
}

// NewSSEReader reads messages from r. A line longer than MaxFrameBytes is
// an error (bufio.ErrTooLong): the config nodes never write one.
func NewSSEReader(r io.Reader) *SSEReader {
	sc := bufio.NewScanner(r)
	// The scanner needs room for the line and its "\r\n".
	sc.Buffer(make([]byte, 64<<10), MaxFrameBytes+2)
	return &SSEReader{sc: sc}
}

// Next returns the next message, or an error (io.EOF at the end).
func (s *SSEReader) Next() (SSEMessage, error) {
	var m SSEMessage
	var data []string
	seen := false
	for s.sc.Scan() {
		line := s.sc.Text()
		if line == "" {
			if seen {
				m.Data = strings.Join(data, "\n")
				return m, nil
			}
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		seen = true
		switch field {
		case "id":
			m.ID = value
		case "event":
			m.Event = value
		case "data":
			data = append(data, value)
		}
	}
	if err := s.sc.Err(); err != nil {
		return m, err
	}
	return m, io.EOF
}
