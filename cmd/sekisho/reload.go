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

func reloadCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := os.Getenv("SEKISHO_ADMIN")
	if def == "" {
		def = "127.0.0.1:9901"
	}
	admin := fs.String("admin", def, "admin address of the running sekisho (env SEKISHO_ADMIN)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	base := *admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Post(base+"/reload", "text/plain", nil)
	if err != nil {
		fmt.Fprintf(stderr, "sekisho reload: %v\n", err)
		return 1
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
		return 1
	}
	if !out.OK {
		fmt.Fprintln(stderr, out.Error)
		return 1
	}
	fmt.Fprintln(stdout, out.Summary)
	return 0
}
