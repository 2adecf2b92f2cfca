// Package devcluster runs the whole system on one machine, each component a
// child process of the same binary, like a tiny Kubernetes: a child that dies
// is restarted after a backoff, and stopping the supervisor stops every child
// and leaves no process behind.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Process is one supervised child.
type Process struct {
	Name string
	Args []string // arguments after the binary
	Env  []string
	URL  string // what to print for it

	mu       sync.Mutex
	pid      int
	restarts int
}

// PID returns the current process id (0 when not running).
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// Restarts returns how many times the child was restarted.
func (p *Process) Restarts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restarts
}

// Supervisor keeps processes running until its context ends.
type Supervisor struct {
	Binary string
	LogDir string
	Log    *slog.Logger
	// StopTimeout is how long a child gets after SIGTERM before SIGKILL.
	StopTimeout time.Duration

	wg sync.WaitGroup
}

// Start launches p and keeps it running until ctx ends. It returns once the
// first start was attempted.
func (s *Supervisor) Start(ctx context.Context, p *Process) error {
	logf, err := os.OpenFile(filepath.Join(s.LogDir, p.Name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("open log for %s: %w", p.Name, err)
	}
	cmd, err := s.spawn(p, logf)
	if err != nil {
		logf.Close()
		return err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer logf.Close()
		backoff := 500 * time.Millisecond
		for {
			started := time.Now()
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case <-ctx.Done():
				s.stop(p, cmd, exited)
				return
			case err := <-exited:
				p.mu.Lock()
				p.pid = 0
				p.mu.Unlock()
				if time.Since(started) > 30*time.Second {
					backoff = 500 * time.Millisecond
				}
				s.Log.Warn("child exited; restarting", "name", p.Name, "err", exitReason(err), "in", backoff, "log", logf.Name())
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, 10*time.Second)
				for {
					cmd, err = s.spawn(p, logf)
					if err == nil {
						break
					}
					s.Log.Error("restart failed", "name", p.Name, "err", err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(backoff):
					}
				}
				p.mu.Lock()
				p.restarts++
				p.mu.Unlock()
				s.Log.Info("child restarted", "name", p.Name, "pid", cmd.Process.Pid, "restarts", p.Restarts())
			}
		}
	}()
	return nil
}

func (s *Supervisor) spawn(p *Process, out io.Writer) (*exec.Cmd, error) {
	cmd := exec.Command(s.Binary, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group: a Ctrl-C in the terminal reaches only the
	// supervisor, which then stops the children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.mu.Lock()
	p.pid = cmd.Process.Pid
	p.mu.Unlock()
	return cmd, nil
}

func (s *Supervisor) stop(p *Process, cmd *exec.Cmd, exited <-chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	timeout := s.StopTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	select {
	case <-exited:
	case <-time.After(timeout):
		s.Log.Warn("child did not stop; killing", "name", p.Name)
		_ = cmd.Process.Kill()
		<-exited
	}
	p.mu.Lock()
	p.pid = 0
	p.mu.Unlock()
}

// Wait blocks until every supervised child has stopped.
func (s *Supervisor) Wait() { s.wg.Wait() }

func exitReason(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + ws.Signal().String()
		}
		return fmt.Sprintf("exit status %d", ee.ExitCode())
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
