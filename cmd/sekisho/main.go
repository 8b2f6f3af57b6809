// Command sekisho is a programmable L7 HTTP proxy: one daemon, one YAML
// pipeline of stages.
//
//	sekisho [run] -config PATH [-watch=true]   serve (the default subcommand)
//	sekisho validate -config PATH              check a config and exit
//	sekisho reload [-admin ADDR]               ask a running sekisho to reload
//	sekisho sidecar --listen ... --upstream ...  TLS in front of a local service
//	sekisho version
package main

import (
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runCmd(args, stdout, stderr)
	case "validate":
		return validateCmd(args, stdout, stderr)
	case "reload":
		return reloadCmd(args, stdout, stderr)
	case "sidecar":
		return sidecarCmd(args, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "sekisho %s\n", version)
		return 0
	case "help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "sekisho: unknown subcommand %q\n", cmd)
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  sekisho [run] -config PATH [-watch=true]    serve the config (SEKISHO_CONFIG is the env equivalent of -config)
  sekisho validate -config PATH               check a config: exit 0 with a summary, or 1 with every error
  sekisho reload [-admin ADDR]                ask a running sekisho to reload its config (POST /reload)
  sekisho sidecar [flags]                     TLS-terminating sidecar in front of a local service (see -h)
  sekisho version
`)
}
