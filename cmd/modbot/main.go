// Command modbot is the server binary: every component of the system is a
// subcommand, so one image runs config nodes, gateways, proxies and the
// replication sidecar.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

var commands = []struct {
	name, help string
	run        func(args []string) error
}{
	{"config-node", "run a control-plane node (Raft + the guild→pod map)", runConfigNode},
	{"gateway", "run a gateway pod (Discord sessions, per-pod SQLite, the bot's work)", runGateway},
	{"proxy", "route Discord webhooks and dashboards to the owning gateway pod", runProxy},
	{"fakediscord", "run the fake Discord (REST, gateway, interactions) for tests and dev", runFakeDiscord},
	{"dev", "run the whole system locally (what make run starts)", runDev},
	{"replicate", "replicate a gateway pod's SQLite with Litestream (sidecar process)", runReplicate},
	{"pgmirror", "mirror the guild→pod map into PostgreSQL for reporting (config nodes with --pg-url run it too)", runPgMirror},
	{"restore", "restore a gateway pod's SQLite from its replica (integrity-checked)", runRestore},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: modbot COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-14s %s\n", c.name, c.help)
	}
	fmt.Fprintln(os.Stderr, "\nmodbot COMMAND --help shows a command's flags.")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	for _, c := range commands {
		if c.name == os.Args[1] {
			if err := c.run(os.Args[2:]); err != nil {
				if errors.Is(err, flag.ErrHelp) {
					os.Exit(2)
				}
				fmt.Fprintf(os.Stderr, "modbot %s: %v\n", c.name, err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "modbot: unknown command %q\n\n", os.Args[1])
	usage()
	os.Exit(2)
}
