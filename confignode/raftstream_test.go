package confignode

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/modbot/modbot/internal/tlsconfig"
	"github.com/modbot/modbot/internal/tlsconfig/tlstest"
)

// TestRaftStreamCloseAllUnblocksEveryConnection: a read blocked on a
// connection the stream dialled, and one on a connection it accepted, both
// return once closeAll runs — what lets a Raft shutdown stuck on a silent
// peer finish (see raftStream).
func TestRaftStreamCloseAllUnblocksEveryConnection(t *testing.T) {
	s, err := newRaftStream("127.0.0.1:0", nil, nil, "")
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

// TestRaftOverTLSRefusesAPeerWithoutTheClusterCA: with TLS, two streams of
// the cluster's CA exchange bytes; a dialler whose certificate is of
// another CA is refused by the accepting node (mTLS), and a node never
// talks to a listener whose certificate does not name the address dialled
// (or --peer-tls-name).
func TestRaftOverTLSRefusesAPeerWithoutTheClusterCA(t *testing.T) {
	ca := tlstest.NewCA(t, "cluster")
	reloader := func(ca *tlstest.CA, names ...string) *tlsconfig.Reloader {
		r, err := tlsconfig.New(ca.WriteFiles(t, t.TempDir(), true, names...), tlsconfig.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	stream := func(r *tlsconfig.Reloader, name string) *raftStream {
		s, err := newRaftStream("127.0.0.1:0", nil, r, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	server := reloader(ca, "127.0.0.1", "config-peers")
	a := stream(server, "")
	// The acceptor's side: echo one byte per connection (the handshake
	// runs on the first read).
	go func() {
		for {
			c, err := a.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 1)
				if _, err := c.Read(b); err == nil {
					_, _ = c.Write(b)
				}
			}()
		}
	}()
	exchange := func(s *raftStream) error {
		c, err := s.Dial(raft.ServerAddress(a.Addr().String()), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte{7}); err != nil {
			return err
		}
		b := make([]byte, 1)
		_, err = c.Read(b)
		return err
	}
	if err := exchange(stream(reloader(ca, "127.0.0.1"), "")); err != nil {
		t.Fatalf("two nodes of the cluster's CA: %v", err)
	}
	if err := exchange(stream(reloader(ca, "127.0.0.1"), "config-peers")); err != nil {
		t.Fatalf("verified by --peer-tls-name: %v", err)
	}
	// An intruder that trusts the cluster's CA but holds a certificate of
	// its own CA: the accepting node refuses it.
	files := tlstest.NewCA(t, "intruder").WriteFiles(t, t.TempDir(), true, "127.0.0.1")
	if err := os.WriteFile(files.CA, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	intruder, err := tlsconfig.New(files, tlsconfig.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := exchange(stream(intruder, "")); err == nil {
		t.Fatal("a node with a certificate of another CA exchanged Raft bytes with the cluster")
	}
	if err := exchange(stream(reloader(ca, "127.0.0.1"), "config-other")); err == nil {
		t.Fatal("a listener whose certificate lacks the expected name was trusted")
	}
	if err := exchange(stream(nil, "")); err == nil {
		t.Fatal("a plain-TCP node exchanged Raft bytes with a TLS cluster")
	}
	deadline := time.Now().Add(5 * time.Second)
	for server.Refusals(tlsconfig.RefusedBadClientCert) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if server.Refusals(tlsconfig.RefusedBadClientCert) == 0 {
		t.Error("the intruder's certificate was not counted as refused")
	}
}
