package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func reloadSetup(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
	def := os.Getenv("SEKISHO_ADMIN")
	if def == "" {
		def = "127.0.0.1:9901"
	}
	admin := fs.String("admin", def, "admin address of the running sekisho (env SEKISHO_ADMIN)")
	return func(args []string, stdout, stderr io.Writer) int {
		if len(args) > 0 {
			return lookup("reload").usageError(stderr, "unexpected argument %q", args[0])
		}
		return reloadCmd(*admin, stdout, stderr)
	}
}

// reloadCmd asks the admin server at admin to reload and reports its answer.
func reloadCmd(admin string, stdout, stderr io.Writer) int {
	base := admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Post(base+"/reload", "text/plain", nil)
	if err != nil {
		fmt.Fprintf(stderr, "sekisho reload: %v\n", err)
		return exitError
	}
	defer resp.Body.Close()
	var out struct {
		OK      bool   `json:"ok"`
		Changed bool   `json:"changed"`
		Summary string `json:"summary"`
		Error   string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		fmt.Fprintf(stderr, "sekisho reload: %s: unreadable answer: %v\n", resp.Status, err)
		return exitError
	}
	if !out.OK {
		fmt.Fprintln(stderr, out.Error)
		return exitError
	}
	fmt.Fprintln(stdout, out.Summary)
	return exitOK
}
