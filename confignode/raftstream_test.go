package confignode

import (
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestRaftStreamCloseAllUnblocksEveryConnection: a read blocked on a
// connection the stream dialled, and one on a connection it accepted, both
// return once closeAll runs — what lets a Raft shutdown stuck on a silent
// peer finish (see raftStream).
func TestRaftStreamCloseAllUnblocksEveryConnection(t *testing.T) {
	s, err := newRaftStream("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// A peer that accepts and never writes or reads.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dialled, err := s.Dial(raft.ServerAddress(silent.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	accepted, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for _, c := range []net.Conn{dialled, accepted} {
		go func() {
			_, err := c.Read(make([]byte, 1))
			errs <- err
		}()
	}
	select {
	case err := <-errs:
		t.Fatalf("a read returned before closeAll: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if n := s.closeAll(); n != 2 {
		t.Fatalf("closeAll closed %d connections, want 2", n)
	}
	for i := 0; i < 2; i++ {
		select {
		case err := <-errs:
			if err == nil {
				t.Fatal("a read on a closed connection succeeded")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a read still blocked after closeAll")
		}
	}
	if n := s.closeAll(); n != 0 {
		t.Fatalf("closed connections are still tracked: %d", n)
	}
}
