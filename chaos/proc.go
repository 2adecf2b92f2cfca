package chaos

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is one component running as its own OS process (the modbot binary
// with a subcommand) inside a host's namespace. Faults act on the real
// process: SIGKILL, SIGSTOP/SIGCONT, a restart on the same data directory.
type Proc struct {
	Name string
	Host *Host
	Bin  string
	Args []string
	Env  []string
	Log  string // stdout and stderr, appended across restarts

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	paused bool
	starts int
}

// Start launches the process (again, after a kill).
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s is already running (pid %d)", p.Name, p.cmd.Process.Pid)
	}
	f, err := os.OpenFile(p.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open %s's log: %w", p.Name, err)
	}
	fmt.Fprintf(f, "\n==== chaos: start %d of %s at %s ====\n", p.starts+1, p.Name, time.Now().Format(time.RFC3339Nano))
	cmd := p.Host.Command(p.Bin, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, and killed with the test process: a failed
	// test leaves nothing running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.starts++
	p.cmd, p.paused = cmd, false
	exited := make(chan struct{})
	p.exited = exited
	go func() {
		_ = cmd.Wait()
		f.Close()
		p.mu.Lock()
		if p.cmd == cmd {
			p.cmd = nil
		}
		p.mu.Unlock()
		close(exited)
	}()
	return nil
}

// Running reports whether the process is alive (paused counts as alive).
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// Paused reports whether the process is stopped by SIGSTOP.
func (p *Proc) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// Starts is how many times the process was started.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// PID is the running process's id (0 when not running).
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *Proc) signal(sig syscall.Signal) (chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil, fmt.Errorf("%s is not running", p.Name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return nil, fmt.Errorf("signal %s to %s: %w", sig, p.Name, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT:
		p.paused = false
	}
	return p.exited, nil
}

// Kill sends SIGKILL and waits for the process to be gone: no shutdown
// code runs, like a node that loses power.
func (p *Proc) Kill() error {
	exited, err := p.signal(syscall.SIGKILL)
	if err != nil {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s did not die within 10s of SIGKILL", p.Name)
	}
}

// Pause freezes the process (SIGSTOP): a GC pause, a frozen VM. Its sockets
// stay open and its peers see silence.
func (p *Proc) Pause() error { _, err := p.signal(syscall.SIGSTOP); return err }

// Resume continues a paused process.
func (p *Proc) Resume() error { _, err := p.signal(syscall.SIGCONT); return err }

// Stop asks the process to shut down (SIGTERM; SIGKILL after d).
func (p *Proc) Stop(d time.Duration) error {
	if p.Paused() {
		_ = p.Resume()
	}
	exited, err := p.signal(syscall.SIGTERM)
	if err != nil {
		if !p.Running() {
			return nil
		}
		return err
	}
	select {
	case <-exited:
		return nil
	case <-time.After(d):
		return errors.Join(fmt.Errorf("%s ignored SIGTERM for %s", p.Name, d), p.Kill())
	}
}
