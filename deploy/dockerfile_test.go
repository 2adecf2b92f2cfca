package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// dockerImage is what the manifests need to know about the image.
type dockerImage struct {
	name     string          // the io.modbot.image.name label: the image's repository
	uid      int64           // the runtime stage's USER
	binaries map[string]bool // absolute paths COPY puts into the runtime stage
}

// lintDockerfile parses a Dockerfile with buildkit's parser and instruction
// parser, runs buildkit's linter (every rule, experimental ones too) plus the
// rules this image must keep, and returns the problems with what it learnt.
func lintDockerfile(src []byte) (dockerImage, []string) {
	var problems []string
	img := dockerImage{binaries: map[string]bool{}}
	res, err := parser.Parse(bytes.NewReader(src))
	if err != nil {
		return img, []string{"parse: " + err.Error()}
	}
	for _, w := range res.Warnings {
		problems = append(problems, fmt.Sprintf("parser: %s (line %d)", w.Short, w.Location.Start.Line))
	}
	warn := func(rule, _ string, _ string, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		problems = append(problems, fmt.Sprintf("lint %s: %s (line %d)", rule, msg, line))
	}
	lint := linter.New(&linter.Config{ExperimentalAll: true, Warn: warn})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return img, append(problems, "instructions: "+err.Error())
	}
	// Rules of buildkit's linter that its dockerfile2llb applies (not the
	// instruction parser): run them here on what the parser gives.
	for _, n := range res.AST.Children {
		if n.Value != strings.ToLower(n.Original[:len(n.Value)]) && !strings.HasPrefix(n.Original, strings.ToUpper(n.Value)) {
			lint.Run(&linter.RuleConsistentInstructionCasing, n.Location(), linter.RuleConsistentInstructionCasing.Format(n.Original[:len(n.Value)], strings.ToUpper(n.Value)))
		}
	}
	names := map[string]bool{}
	for _, st := range stages {
		if st.Name != "" && names[st.Name] {
			lint.Run(&linter.RuleDuplicateStageName, st.Location, linter.RuleDuplicateStageName.Format(st.Name))
		}
		names[st.Name] = true
		for _, cmd := range st.Commands {
			switch c := cmd.(type) {
			case *instructions.EntrypointCommand:
				if c.PrependShell {
					lint.Run(&linter.RuleJSONArgsRecommended, c.Location(), linter.RuleJSONArgsRecommended.Format(c.Name()))
				}
			case *instructions.CmdCommand:
				if c.PrependShell {
					lint.Run(&linter.RuleJSONArgsRecommended, c.Location(), linter.RuleJSONArgsRecommended.Format(c.Name()))
				}
			case *instructions.WorkdirCommand:
				if !path.IsAbs(c.Path) {
					lint.Run(&linter.RuleWorkdirRelativePath, c.Location(), linter.RuleWorkdirRelativePath.Format(c.Path))
				}
			}
		}
	}

	// This image's own rules.
	if len(stages) < 2 {
		return img, append(problems, "want a multi-stage build: a Go builder and a runtime stage without the toolchain")
	}
	build, runtime := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.BaseName, "golang:") {
		problems = append(problems, "the build stage must start from golang:… (it has gcc for cgo)")
	}
	cgo, builds := false, false
	for _, cmd := range build.Commands {
		switch c := cmd.(type) {
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				cgo = cgo || (kv.Key == "CGO_ENABLED" && kv.Value == "1")
			}
		case *instructions.RunCommand:
			line := strings.Join(c.CmdLine, " ")
			builds = builds || (strings.Contains(line, "go build") && strings.Contains(line, "./cmd/modbot"))
			if strings.Contains(line, "-race") {
				problems = append(problems, "the image is built without -race")
			}
		}
	}
	if !cgo {
		problems = append(problems, "the build stage must set CGO_ENABLED=1 (go-sqlite3)")
	}
	if !builds {
		problems = append(problems, "the build stage must go build ./cmd/modbot")
	}
	if base := runtime.BaseName; !strings.HasPrefix(base, "gcr.io/distroless/base-debian") && !strings.HasPrefix(base, "gcr.io/distroless/cc-debian") {
		problems = append(problems, fmt.Sprintf("runtime base %s: want a glibc distroless base (cgo binary, no shell)", base))
	}
	var user, entrypoint string
	var entry []string
	for _, cmd := range runtime.Commands {
		switch c := cmd.(type) {
		case *instructions.RunCommand:
			problems = append(problems, fmt.Sprintf("the runtime stage runs %q: it has no shell", strings.Join(c.CmdLine, " ")))
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EntrypointCommand:
			entry = c.CmdLine
		case *instructions.LabelCommand:
			for _, kv := range c.Labels {
				if kv.Key == "io.modbot.image.name" {
					img.name = strings.Trim(kv.Value, `"`)
				}
			}
		case *instructions.CopyCommand:
			if c.From == "" {
				continue
			}
			for _, s := range c.SourcePaths {
				dest := c.DestPath
				if strings.HasSuffix(dest, "/") {
					dest += path.Base(s)
				}
				img.binaries[dest] = true
			}
		}
	}
	uidText, _, _ := strings.Cut(user, ":")
	uid, err := strconv.ParseInt(uidText, 10, 64)
	if err != nil || uid == 0 {
		problems = append(problems, fmt.Sprintf("USER %q: want a numeric non-root uid (runAsNonRoot can only verify a number)", user))
	}
	img.uid = uid
	if len(entry) > 0 {
		entrypoint = entry[0]
	}
	if len(entry) != 1 || !img.binaries[entrypoint] || path.Base(entrypoint) != "modbot" {
		problems = append(problems, fmt.Sprintf("ENTRYPOINT %v: want [\"/…/modbot\"] copied from the build stage", entry))
	}
	if img.name == "" {
		problems = append(problems, "no io.modbot.image.name label: the manifests' image is checked against it")
	}
	return img, problems
}

func parseDockerfileAt(t testing.TB, file string) dockerImage {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	img, problems := lintDockerfile(src)
	if len(problems) > 0 {
		t.Fatalf("%s:\n%s", file, strings.Join(problems, "\n"))
	}
	return img
}

func TestDockerfileLintsClean(t *testing.T) {
	img := parseDockerfileAt(t, filepath.Join(repoRoot(t), "Dockerfile"))
	if img.name != "ghcr.io/modbot/modbot" || img.uid != 65532 || !img.binaries["/usr/local/bin/modbot"] || !img.binaries["/usr/local/bin/modbotctl"] {
		t.Errorf("Dockerfile read as %+v", img)
	}
}

func TestDockerfileLintCatchesMistakes(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, old, new, want string }{
		{"shell form entrypoint", `ENTRYPOINT ["/usr/local/bin/modbot"]`, `ENTRYPOINT /usr/local/bin/modbot`, "JSONArgsRecommended"},
		{"root user", "USER 65532:65532", "USER root", "numeric non-root uid"},
		{"no user", "USER 65532:65532\n", "", "numeric non-root uid"},
		{"static base", "FROM gcr.io/distroless/base-debian12:nonroot AS runtime", "FROM gcr.io/distroless/static-debian12:nonroot AS runtime", "glibc distroless base"},
		{"shell in runtime", "WORKDIR /data\n", "WORKDIR /data\nRUN mkdir -p /data/x\n", "it has no shell"},
		{"cgo off", "ENV CGO_ENABLED=1", "ENV CGO_ENABLED=0", "CGO_ENABLED=1"},
		{"stage casing", "AS runtime", "as runtime", "FromAsCasing"},
		{"maintainer", "WORKDIR /src\n", "WORKDIR /src\nMAINTAINER someone\n", "MaintainerDeprecated"},
		{"relative workdir", "WORKDIR /data", "WORKDIR data", "WorkdirRelativePath"},
		{"no label", `      io.modbot.image.name="ghcr.io/modbot/modbot"`, `      io.modbot.other="x"`, "io.modbot.image.name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Contains(orig, []byte(tc.old)) {
				t.Fatalf("Dockerfile has no %q (the test's edit is stale)", tc.old)
			}
			_, problems := lintDockerfile(bytes.Replace(orig, []byte(tc.old), []byte(tc.new), 1))
			if !strings.Contains(strings.Join(problems, "\n"), tc.want) {
				t.Errorf("want a problem with %q, got %v", tc.want, problems)
			}
		})
	}
}

// TestDockerignoreKeepsTheBuildInputs: every file `go build ./cmd/...` reads
// (Go sources, embedded files, go.mod, go.sum) is in the build context.
func TestDockerignoreKeepsTheBuildInputs(t *testing.T) {
	root := repoRoot(t)
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	list := exec.Command("go", "list", "-deps", "-f", `{{if not .Standard}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}
{{end}}{{range .CgoFiles}}{{$d}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}
{{end}}{{end}}`, "./cmd/...")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	needed := []string{"go.mod", "go.sum"}
	for _, file := range strings.Fields(string(out)) {
		if rel, err := filepath.Rel(root, file); err == nil && !strings.HasPrefix(rel, "..") {
			needed = append(needed, rel) // outside root: the module cache
		}
	}
	if len(needed) < 20 {
		t.Fatalf("go list found only %v", needed)
	}
	for _, rel := range needed {
		if ignored, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel)); err != nil || ignored {
			t.Errorf(".dockerignore leaves %s out of the build context", rel)
		}
	}
	// And it does keep big things out.
	for _, rel := range []string{".git/HEAD", "deploy/go.mod", "bin/modbot"} {
		if ignored, _ := pm.MatchesOrParentMatches(rel); !ignored {
			t.Errorf(".dockerignore sends %s to the build", rel)
		}
	}
}
