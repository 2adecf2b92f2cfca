package confignode

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/modbot/modbot/internal/tlsconfig"
)

// raftStream is the Raft transport's TCP stream layer, which remembers every
// connection it dialled or accepted so that a shutdown can cut them all.
//
// hashicorp/raft's Shutdown waits for its replication goroutines, and one
// blocked in a pipelined AppendEntries to a peer that stopped reading
// (stalled, or itself shutting down) waits for that peer forever: Close
// never returned (TestLostLeadershipStopsInFlightMoves hung 10 minutes in
// CI). Closing the connections fails that send, the goroutine ends, and the
// shutdown completes. The invariant: Close and Kill return, whatever the
// peers do.
//
// With TLS (tls non-nil) every connection is TLS both ways: a peer's
// certificate is verified against the CA and must name tlsName (default the
// host dialled), and with client auth on, an accepting node verifies the
// dialler's.
type raftStream struct {
	net.Listener
	advertise net.Addr
	tls       *tlsconfig.Reloader
	tlsName   string

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func newRaftStream(bind string, advertise net.Addr, tlsr *tlsconfig.Reloader, tlsName string) (*raftStream, error) {
	l, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	return &raftStream{Listener: l, advertise: advertise, tls: tlsr, tlsName: tlsName, conns: map[*trackedConn]struct{}{}}, nil
}

// Addr is the address peers dial (the advertised one).
func (s *raftStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

func (s *raftStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	if s.tls != nil {
		cfg := s.tls.ClientConfigFor(string(addr))
		if s.tlsName != "" {
			cfg = s.tls.ClientConfigFor(s.tlsName)
		}
		tc := tls.Client(c, cfg)
		_ = tc.SetDeadline(time.Now().Add(timeout))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, fmt.Errorf("raft TLS handshake with %s: %w", addr, err)
		}
		_ = tc.SetDeadline(time.Time{})
		c = tc
	}
	return s.track(c), nil
}

func (s *raftStream) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if s.tls != nil {
		// The handshake runs on the connection's first read, in raft's
		// per-connection goroutine, so a slow client stalls only itself.
		c = tls.Server(c, s.tls.ServerConfig())
	}
	return s.track(c), nil
}

func (s *raftStream) track(c net.Conn) net.Conn {
	t := &trackedConn{Conn: c, s: s}
	s.mu.Lock()
	s.conns[t] = struct{}{}
	s.mu.Unlock()
	return t
}

// closeAll closes every open connection; it returns how many.
func (s *raftStream) closeAll() int {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	return len(conns)
}

type trackedConn struct {
	net.Conn
	s    *raftStream
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}
