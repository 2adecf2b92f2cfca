// Command modbotctl is the operator's CLI for the config nodes' admin API.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/internal/cli"
	"github.com/modbot/modbot/internal/tlsconfig"
)

const defaultConfigURL = "http://127.0.0.1:8000"

type ctl struct {
	client *assignments.Client
	tls    *tlsconfig.Reloader // nil: plain HTTP
	output string
	out    io.Writer
}

type command struct {
	name, args, help string
	run              func(ctx context.Context, c *ctl, args []string) error
}

var commands = []command{
	{"status", "", "leader, term, revision, voters, pods, guild counts per pod", cmdStatus},
	{"pods", "", "list gateway pods with their state, guilds and shards", cmdPods},
	{"guilds", "[--pod P]", "list guilds and their owners", cmdGuilds},
	{"guild", "G", "show one guild", cmdGuild},
	{"shards", "", "list shards and their holders", cmdShards},
	{"move-guild", "G --to P [--no-wait]", "migrate one guild; P is an ordinal (1) or a pod id", cmdMoveGuild},
	{"rebalance", "[--dry-run]", "plan and apply moves until guild counts are even", cmdRebalance},
	{"drain", "P", "move every guild off pod P", cmdDrain},
	{"watch", "[--from REV]", "print the change stream", cmdWatch},
	{"dead-letters", "[--pod P] [--guild G]", "list events the pods' handlers kept failing on", cmdDeadLetters},
	{"replay-dead-letter", "P ID", "route a dead-lettered event again (it stays if it fails again)", cmdReplayDeadLetter},
	{"config-node", "list | join --id ID --raft-addr ADDR | remove ID | transfer-leadership [--to ID]", "manage the control plane's voters", cmdConfigNode},
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: modbotctl [--config URL,…] [--token T] [-o table|json] COMMAND [args]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %-28s %s\n", c.name, c.args, c.help)
	}
	fmt.Fprintf(w, "\nWith nothing configured it talks to %s with the token in .modbot-dev/token (what `make run` starts).\n", defaultConfigURL)
	fmt.Fprintln(w, "Environment: MODBOT_CONFIG, MODBOT_TOKEN, MODBOT_OUTPUT, MODBOT_DEV_DIR.")
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "modbotctl: %v\n", err)
		os.Exit(1)
	}
}

// globalFlags are accepted before the command and after it.
func globalFlags(fs *flag.FlagSet, config, token, output *string) {
	fs.StringVar(config, "config", "", "config node URLs, comma-separated (default "+defaultConfigURL+")")
	fs.StringVar(token, "token", "", "API bearer token (default: the dev token file)")
	fs.StringVar(output, "output", "table", "output format: table or json")
	fs.StringVar(output, "o", "table", "output format (short for --output)")
}

func run(args []string, out io.Writer) error {
	var config, token, output string
	fs := flag.NewFlagSet("modbotctl", flag.ContinueOnError)
	fs.Usage = func() { usage(fs.Output()) }
	globalFlags(fs, &config, &token, &output)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		usage(os.Stderr)
		return flag.ErrHelp
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	for _, c := range commands {
		if c.name != name {
			continue
		}
		// Global flags may also follow the command.
		sub := flag.NewFlagSet(name, flag.ContinueOnError)
		saved := [3]string{config, token, output}
		globalFlags(sub, &config, &token, &output) // resets them to defaults
		config, token, output = saved[0], saved[1], saved[2]
		rest = hoistGlobalFlags(sub, rest)
		if output != "table" && output != "json" {
			return fmt.Errorf("-o must be table or json, not %q", output)
		}
		if config == "" {
			config = defaultConfigURL
		}
		if token == "" {
			token = devToken()
		}
		client, err := assignments.NewClient(cli.SplitList(config), token)
		if err != nil {
			return err
		}
		// TLS from the environment (the components' --tls-* flags' names):
		// with a CA the config URLs are https; with a certificate too,
		// modbotctl presents it (mTLS).
		tlsr, err := tlsconfig.New(tlsconfig.Files{Cert: os.Getenv("MODBOT_TLS_CERT"), Key: os.Getenv("MODBOT_TLS_KEY"), CA: os.Getenv("MODBOT_TLS_CA")}, tlsconfig.Options{})
		if err != nil {
			return fmt.Errorf("TLS (MODBOT_TLS_CERT, MODBOT_TLS_KEY, MODBOT_TLS_CA): %w", err)
		}
		client.UseTLS(tlsr)
		ctx, stop := cli.SignalContext()
		defer stop()
		err = c.run(ctx, &ctl{client: client, tls: tlsr, output: output, out: out}, rest)
		return explain(err, config, token)
	}
	usage(os.Stderr)
	return fmt.Errorf("unknown command %q", name)
}

// hoistGlobalFlags parses --config/--token/-o wherever they appear after the
// command and returns the remaining arguments in order.
func hoistGlobalFlags(fs *flag.FlagSet, args []string) []string {
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name := strings.TrimLeft(a, "-")
		name, val, hasVal := strings.Cut(name, "=")
		if strings.HasPrefix(a, "-") && fs.Lookup(name) != nil {
			if !hasVal && i+1 < len(args) {
				val = args[i+1]
				i++
			}
			_ = fs.Set(name, val)
			continue
		}
		rest = append(rest, a)
	}
	return rest
}

func devToken() string {
	dir := os.Getenv("MODBOT_DEV_DIR")
	if dir == "" {
		dir = ".modbot-dev"
	}
	b, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// explain adds what to do next to common failures.
func explain(err error, config, token string) error {
	if err == nil {
		return nil
	}
	switch {
	case assignments.IsStatus(err, 401) && token == "":
		return fmt.Errorf("%w\n(no token: pass --token, set MODBOT_TOKEN, or run from the directory holding .modbot-dev/token)", err)
	case assignments.IsStatus(err, 401):
		return fmt.Errorf("%w\n(check --token / MODBOT_TOKEN)", err)
	case strings.Contains(err.Error(), "no config node answered"):
		return fmt.Errorf("%w\n(is the cluster running? `make run` starts one; --config or MODBOT_CONFIG points elsewhere; tried %s)", err, config)
	}
	return err
}

func (c *ctl) json(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *ctl) table(header string, rows [][]any) error {
	w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		parts := make([]string, len(r))
		for i, v := range r {
			parts[i] = fmt.Sprint(v)
		}
		fmt.Fprintln(w, strings.Join(parts, "\t"))
	}
	return w.Flush()
}

func noArgs(name string, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s takes no arguments, got %v", name, args)
	}
	return nil
}

func ago(ms int64) string {
	if ms < 0 {
		return "-"
	}
	return (time.Duration(ms) * time.Millisecond).Round(100 * time.Millisecond).String()
}
