// Command sekisho is a programmable L7 HTTP proxy: one daemon, one YAML
// pipeline of stages.
//
//	sekisho [run] [-watch=true] FILE          serve (the default command)
//	sekisho validate FILE                     check a config and exit
//	sekisho reload [-admin ADDR]              ask a running sekisho to reload
//	sekisho sidecar --listen ... --upstream ...  TLS in front of a local service
//	sekisho version
//	sekisho help [COMMAND]
//
// FILE may also be given as -config FILE, or by SEKISHO_CONFIG. Exit codes:
// 0 ok, 1 a config or runtime error, 2 a usage error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, as documented in the README's "Command line".
const (
	exitOK    = 0
	exitError = 1 // a config that does not load, or a runtime failure
	exitUsage = 2 // unknown command or flag, a missing or extra argument
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// A command is one subcommand of sekisho.
type command struct {
	name     string
	synopsis string // what follows "sekisho NAME" in its usage line
	summary  string // one line, for the command list
	about    string // a paragraph for `sekisho help NAME`
	// setup defines the command's flags on fs and returns what runs once
	// they are parsed, given the positional arguments left.
	setup func(fs *flag.FlagSet) func(args []string, stdout, stderr io.Writer) int
}

// commands is every subcommand, in the order the usage lists them.
var commands []*command

func init() {
	commands = []*command{
		{name: "run", synopsis: "[flags] [FILE]", summary: "serve a config (the default command)",
			about: "Serve the config in FILE (or -config FILE, or $SEKISHO_CONFIG) until SIGTERM or SIGINT, then drain.\n" +
				"SIGHUP, POST /reload on the admin server and (with -watch) a change of the file reload it.",
			setup: runSetup},
		{name: "validate", synopsis: "[flags] [FILE]", summary: "check a config: exit 0 with a summary, or 1 with every error",
			about: "Load FILE (or -config FILE, or $SEKISHO_CONFIG) as `run` would, start nothing, and print a summary,\n" +
				"or every error as FILE:LINE:COL: message.",
			setup: validateSetup},
		{name: "reload", synopsis: "[flags]", summary: "ask a running sekisho to reload its config (POST /reload)",
			about: "Ask the sekisho whose admin server is at -admin to reload its config file, and wait for the result:\n" +
				"exit 0 with the summary, or 1 with every error (the old config keeps serving).",
			setup: reloadSetup},
		{name: "sidecar", synopsis: "[flags]", summary: "serve TLS in front of one local service, configured by flags",
			about: "Terminate TLS (optionally mTLS) in front of one local service. The flags stand for an ordinary\n" +
				"config, which -print-config prints.",
			setup: sidecarSetup},
		{name: "version", summary: "print the version",
			about: "Print the version. `sekisho -version` and `sekisho --version` do the same.",
			setup: func(*flag.FlagSet) func([]string, io.Writer, io.Writer) int { return versionCmd }},
		{name: "help", synopsis: "[COMMAND]", summary: "list the commands, or show one command's flags",
			about: "Without COMMAND, list the commands; with it, show that command's flags. `sekisho -h` and\n" +
				"`sekisho COMMAND -h` do the same.",
			setup: func(*flag.FlagSet) func([]string, io.Writer, io.Writer) int { return helpCmd }},
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// run dispatches a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			usage(stdout)
			return exitOK
		case "-version", "--version":
			return versionCmd(args[1:], stdout, stderr)
		}
	}
	if len(args) == 0 && os.Getenv("SEKISHO_CONFIG") == "" {
		usage(stderr)
		return exitUsage
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		// `sekisho -config FILE`: run is the default command.
		return runCommand(lookup("run"), args, stdout, stderr)
	}
	c := lookup(args[0])
	if c == nil {
		fmt.Fprintf(stderr, "sekisho: unknown command %q\n\n", args[0])
		usage(stderr)
		return exitUsage
	}
	return runCommand(c, args[1:], stdout, stderr)
}

// runCommand parses c's flags from args and runs it. -h and --help print
// its help to stdout and exit 0; a bad flag prints the error and the help
// to stderr and exits 2.
func runCommand(c *command, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sekisho "+c.name, flag.ContinueOnError)
	exec := c.setup(fs)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, to the stream the outcome calls for
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.help(stdout, fs)
			return exitOK
		}
		fmt.Fprintln(stderr)
		c.help(stderr, fs)
		return exitUsage
	}
	return exec(fs.Args(), stdout, stderr)
}

// usageError reports a wrong use of c, with c's help, and returns exitUsage.
func (c *command) usageError(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "sekisho %s: %s\n\n", c.name, fmt.Sprintf(format, args...))
	fs := flag.NewFlagSet("sekisho "+c.name, flag.ContinueOnError)
	c.setup(fs)
	c.help(stderr, fs)
	return exitUsage
}

// help prints c's usage line, what it does, and its flags.
func (c *command) help(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: sekisho %s", c.name)
	if c.synopsis != "" {
		fmt.Fprintf(w, " %s", c.synopsis)
	}
	fmt.Fprintf(w, "\n\n%s\n", c.about)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintf(w, "\nflags:\n")
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

// usage lists the commands, one line each.
func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: sekisho COMMAND [flags] [args]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
"sekisho -config FILE" is "sekisho run -config FILE".
"sekisho help COMMAND" or "sekisho COMMAND -h" shows a command's flags.
"sekisho -version" and "sekisho --version" print the version.
Exit codes: 0 ok, 1 config or runtime error, 2 usage error.
`)
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		return lookup("version").usageError(stderr, "unexpected argument %q", args[0])
	}
	fmt.Fprintf(stdout, "sekisho %s\n", version)
	return exitOK
}

func helpCmd(args []string, stdout, stderr io.Writer) int {
	switch len(args) {
	case 0:
		usage(stdout)
		return exitOK
	case 1:
		c := lookup(args[0])
		if c == nil {
			fmt.Fprintf(stderr, "sekisho help: unknown command %q\n\n", args[0])
			usage(stderr)
			return exitUsage
		}
		fs := flag.NewFlagSet("sekisho "+c.name, flag.ContinueOnError)
		c.setup(fs)
		c.help(stdout, fs)
		return exitOK
	default:
		return lookup("help").usageError(stderr, "unexpected argument %q", args[1])
	}
}
