// Package pgserver starts a throwaway PostgreSQL from the server binaries on
// the machine (initdb + postgres, listening on 127.0.0.1 only), for the
// tests, the benchmarks and `modbot dev`. PostgreSQL refuses to run as root,
// so when this process is root the server runs as the `postgres` user.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultBinDir is where Debian's postgresql-15 package puts the server.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// ErrNoServer is wrapped by Start's error when the server binaries are not
// installed.
var ErrNoServer = errors.New("PostgreSQL server binaries not found")

// Options configure a server. Zero values take the defaults noted.
type Options struct {
	// Dir holds the data directory and the server log (created if needed).
	Dir string
	// BinDir holds initdb and postgres (default $MODBOT_PG_BIN or DefaultBinDir).
	BinDir string
	// Port on 127.0.0.1 (0: a free one, retried if taken before the bind).
	Port int
	// Password of the superuser `postgres` over TCP (default "postgres").
	Password string
	// Durable keeps fsync on (off by default: throwaway data, faster tests).
	Durable bool
}

// Server is a running (or stopped) PostgreSQL.
type Server struct {
	o       Options
	data    string
	logPath string
	cred    *syscall.Credential

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exits
}

// BinDir returns where the server binaries are looked for.
func BinDir() string {
	if d := os.Getenv("MODBOT_PG_BIN"); d != "" {
		return d
	}
	return DefaultBinDir
}

// Available reports whether the server binaries are installed.
func Available() error {
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(BinDir(), b)); err != nil {
			return fmt.Errorf("%w in %s (install postgresql-15, or set MODBOT_PG_BIN): %v", ErrNoServer, BinDir(), err)
		}
	}
	return nil
}

// Start initialises a cluster in o.Dir (unless one is there already) and
// starts it.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.BinDir == "" {
		o.BinDir = BinDir()
	}
	if o.Password == "" {
		o.Password = "postgres"
	}
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return nil, fmt.Errorf("%w in %s: %v", ErrNoServer, o.BinDir, err)
		}
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", o.Dir, err)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{o: o, data: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "postgres.log")}
	if os.Geteuid() == 0 {
		cred, err := postgresUser()
		if err != nil {
			return nil, err
		}
		s.cred = cred
		if err := openPathTo(dir); err != nil {
			return nil, err
		}
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("hand %s to the postgres user: %w", dir, err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.data, "PG_VERSION")); err != nil {
		if err := s.initdb(ctx); err != nil {
			return nil, err
		}
	}
	fixed := o.Port != 0
	for attempt := 0; ; attempt++ {
		if !fixed {
			if s.o.Port, err = freePort(); err != nil {
				return nil, err
			}
		}
		err = s.Start(ctx)
		if err == nil || fixed || attempt >= 5 || !strings.Contains(err.Error(), "could not bind") {
			return s, err
		}
	}
}

// postgresUser is the account the server runs as when we are root.
func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL must run as the postgres user, which does not exist (install postgresql-15): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// openPathTo lets other users traverse every directory above dir (a test's
// temporary directories are 0700), so the postgres user reaches its own.
func openPathTo(dir string) error {
	for d := filepath.Dir(dir); d != "/" && d != "."; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("let the postgres user into %s: %w", d, err)
			}
		}
	}
	return nil
}

func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.o.BinDir, name), args...)
	cmd.Dir = filepath.Dir(s.data)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

func (s *Server) initdb(ctx context.Context) error {
	pw := filepath.Join(filepath.Dir(s.data), "pwfile")
	if err := os.WriteFile(pw, []byte(s.o.Password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pw)
	if s.cred != nil {
		if err := os.Chown(pw, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return err
		}
	}
	out, err := s.command(ctx, "initdb", "-D", s.data, "-U", "postgres", "-E", "UTF8", "--no-sync",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile="+pw).CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", s.data, err, out)
	}
	return nil
}

// Start starts a stopped server on its port and waits until it accepts
// connections.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	start, _ := logf.Seek(0, 2)
	args := []string{"-D", s.data, "-p", strconv.Itoa(s.o.Port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
		"-c", "max_connections=100", "-c", "shared_buffers=32MB"}
	if !s.o.Durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := s.command(context.Background(), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := pgx.Connect(cctx, s.URL("postgres"))
		cancel()
		if err == nil {
			_ = c.Close(ctx)
			break
		}
		select {
		case <-done:
			return fmt.Errorf("postgres exited at start: %s", s.logSince(start))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("postgres did not accept connections within 60s: %v: %s", err, s.logSince(start))
		}
	}
	s.cmd, s.done = cmd, done
	return nil
}

func (s *Server) logSince(off int64) string {
	b, err := os.ReadFile(s.logPath)
	if err != nil || off > int64(len(b)) {
		return "(no log)"
	}
	return strings.TrimSpace(string(b[off:]))
}

// Stop shuts the server down (fast shutdown: open connections are closed)
// and waits for it to exit. A stopped server can be started again.
func (s *Server) Stop() error { return s.signal(syscall.SIGINT) }

// Kill ends the server with SIGKILL (no shutdown; crash recovery on the next
// start).
func (s *Server) Kill() error { return s.signal(syscall.SIGKILL) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	// The whole process group: after a SIGKILL of the postmaster its
	// backends would otherwise linger on the port.
	_ = syscall.Kill(-s.cmd.Process.Pid, sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	if sig == syscall.SIGKILL {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	}
	s.cmd, s.done = nil, nil
	return nil
}

// Port is the TCP port on 127.0.0.1.
func (s *Server) Port() int { return s.o.Port }

// Password is the superuser's password.
func (s *Server) Password() string { return s.o.Password }

// URL returns the superuser's URL of a database.
func (s *Server) URL(db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", s.o.Password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(s.o.Port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// CreateDatabase creates a database and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect to create database %s: %w", name, err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return s.URL(name), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
