package deploy

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the main module's directory (deploy/ is a module inside it).
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "modbot")); err != nil {
		t.Fatalf("main module not found at %s: %v", root, err)
	}
	return root
}

// binary is what a freshly built modbot says about itself: its commands and,
// per command, its flags with their environment variables and defaults.
type binary struct {
	commands map[string]bool
	flags    map[string]map[string]flagInfo // command → flag name → info
	// getenv holds the environment variables the main module reads by name
	// (os.Getenv / os.LookupEnv with a literal), beside the flags' own.
	getenv map[string]bool
}

type flagInfo struct {
	env, def string
}

var (
	binaryOnce sync.Once
	binaryInfo *binary
	binaryErr  string
)

// modbotBinary builds cmd/modbot once per test run and reads its help.
func modbotBinary(t testing.TB) *binary {
	t.Helper()
	root := repoRoot(t)
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "modbot-deploy-test-")
		if err != nil {
			binaryErr = err.Error()
			return
		}
		bin := filepath.Join(dir, "modbot")
		build := exec.Command("go", "build", "-o", bin, "./cmd/modbot")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := build.CombinedOutput(); err != nil {
			binaryErr = "go build ./cmd/modbot: " + err.Error() + "\n" + string(out)
			return
		}
		b := &binary{commands: map[string]bool{}, flags: map[string]map[string]flagInfo{}}
		usage, _ := exec.Command(bin).CombinedOutput() // exits 2 with the command list
		b.commands = parseCommands(string(usage))
		for cmd := range b.commands {
			help, _ := exec.Command(bin, cmd, "-h").CombinedOutput()
			b.flags[cmd] = parseFlags(string(help))
		}
		b.getenv, err = scanGetenv(root)
		if err != nil {
			binaryErr = err.Error()
			return
		}
		binaryInfo = b
		_ = os.RemoveAll(dir)
	})
	if binaryInfo == nil {
		t.Fatalf("modbot binary: %s", binaryErr)
	}
	return binaryInfo
}

var commandLine = regexp.MustCompile(`^  ([a-z][a-z-]*)\s{2,}\S`)

// parseCommands reads the "commands:" list of `modbot` without arguments.
func parseCommands(usage string) map[string]bool {
	out := map[string]bool{}
	in := false
	sc := bufio.NewScanner(strings.NewReader(usage))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "commands:") {
			in = true
			continue
		}
		if m := commandLine.FindStringSubmatch(line); in && m != nil {
			out[m[1]] = true
		}
	}
	return out
}

var flagLine = regexp.MustCompile(`^  --([a-z0-9-]+)\s.*?(?:\(default ([^)]*)\))?\s*\[\$([A-Z0-9_]+)\]$`)

// parseFlags reads `modbot COMMAND -h`: "  --name  usage (default D) [$ENV]".
func parseFlags(help string) map[string]flagInfo {
	out := map[string]flagInfo{}
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		if m := flagLine.FindStringSubmatch(sc.Text()); m != nil {
			out[m[1]] = flagInfo{env: m[3], def: m[2]}
		}
	}
	return out
}

var getenvCall = regexp.MustCompile(`os\.(?:Getenv|LookupEnv)\("([A-Z0-9_]+)"\)`)

// scanGetenv finds the environment variables the main module's non-test code
// reads by a literal name. deploy/ is skipped (another module).
func scanGetenv(root string) (map[string]bool, error) {
	out := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (name == "deploy" || strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range getenvCall.FindAllSubmatch(src, -1) {
			out[string(m[1])] = true
		}
		return nil
	})
	return out, err
}

// sourceMentions reports whether a non-test Go file under dir (relative to
// the repository) contains s.
func sourceMentions(t testing.TB, dir, s string) bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(src, []byte(s)) {
			return true
		}
	}
	return false
}

func TestBinaryHelpIsParsed(t *testing.T) {
	b := modbotBinary(t)
	for _, cmd := range []string{"config-node", "gateway", "proxy", "replicate", "restore"} {
		if !b.commands[cmd] {
			t.Errorf("modbot has no command %q (have %v)", cmd, b.commands)
		}
		if len(b.flags[cmd]) < 3 {
			t.Errorf("modbot %s -h: parsed only %v", cmd, b.flags[cmd])
		}
	}
	if f := b.flags["gateway"]["http-addr"]; f.env != "MODBOT_HTTP_ADDR" || f.def != "127.0.0.1:9000" {
		t.Errorf("gateway --http-addr parsed as %+v", f)
	}
	if !b.getenv["MODBOT_LOG_FORMAT"] {
		t.Errorf("MODBOT_LOG_FORMAT not found among the variables the code reads: %v", b.getenv)
	}
}
