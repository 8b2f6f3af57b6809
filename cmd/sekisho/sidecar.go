package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"sekisho/proxy"
	"sekisho/proxy/config"
)

// sidecarFlags are the parameters of the sidecar container. Each is also
// read from SEKISHO_<FLAG> (upper case, dashes as underscores); a flag on
// the command line wins over the environment.
type sidecarFlags struct {
	listen, upstream, tlsCert, tlsKey, clientCA, readinessPath, admin, adminPublic string
	printConfig                                                                    bool
}

// sidecarEnv is the environment variable that stands for a sidecar flag.
func sidecarEnv(flagName string) string {
	return "SEKISHO_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// sidecarSetup defines the sidecar's flags. The sidecar serves TLS in front
// of one local service: the flags are turned into an ordinary config,
// validated like a file and served by the same engine as `sekisho run`;
// --print-config shows that config instead.
func sidecarSetup(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
	var f sidecarFlags
	str := func(p *string, name, def, help string) {
		env := sidecarEnv(name)
		if v, ok := os.LookupEnv(env); ok {
			def = v
		}
		fs.StringVar(p, name, def, help+" (env "+env+")")
	}
	str(&f.listen, "listen", ":8443", "address to serve on")
	str(&f.upstream, "upstream", "127.0.0.1:8080", "the local service, host:port or http(s)://host:port")
	str(&f.tlsCert, "tls-cert", "", "certificate file (PEM); with -tls-key, the listener terminates TLS and follows the files as they rotate")
	str(&f.tlsKey, "tls-key", "", "key file (PEM)")
	str(&f.clientCA, "client-ca", "", "CA file: clients must present a certificate it signed (mTLS); the verified subject goes upstream as X-Client-Cert-Subject")
	str(&f.readinessPath, "readiness-path", "", "probe this path of the upstream; ready on 2xx (empty: ready on any HTTP answer to /)")
	str(&f.admin, "admin", "127.0.0.1:9901", "admin address (the full admin API: /readyz, /metrics, POST /reload, /config); keep it on loopback")
	str(&f.adminPublic, "admin-public", "", "read-only admin address for the pod network, serving only GET/HEAD /healthz, /readyz and /metrics: in a pod, :PORT lets the kubelet probe and Prometheus scrape (empty: none)")
	fs.BoolVar(&f.printConfig, "print-config", false, "print the config the flags stand for and exit (1 if it is not valid)")
	return func(args []string, stdout, stderr io.Writer) int {
		if len(args) > 0 {
			return lookup("sidecar").usageError(stderr, "unexpected argument %q", args[0])
		}
		return sidecarCmd(f, stdout, stderr)
	}
}

// sidecarCmd serves, or prints, the config the flags f stand for.
func sidecarCmd(f sidecarFlags, stdout, stderr io.Writer) int {
	text, err := sidecarConfig(f)
	if err != nil {
		fmt.Fprintf(stderr, "sekisho sidecar: %v\n", err)
		return exitUsage
	}
	if f.printConfig {
		stdout.Write(text)
	}
	// The text is generated, so expanding ${VAR} in it would only mangle a
	// path that happens to hold a dollar sign.
	cfg, err := config.Parse("sidecar", text, func(string) (string, bool) { return "", false })
	if err != nil {
		printSidecarError(stderr, err)
		return exitError
	}
	if f.printConfig {
		return exitOK
	}
	return serve(cfg, proxy.Options{}, false, stderr)
}

// printSidecarError reports the problems of the generated config without
// their positions, which mean nothing to someone who wrote flags.
func printSidecarError(w io.Writer, err error) {
	var ce config.Errors
	if !errors.As(err, &ce) {
		fmt.Fprintf(w, "sekisho sidecar: %v\n", err)
		return
	}
	for _, e := range ce {
		fmt.Fprintf(w, "sekisho sidecar: %s\n", e.Msg)
	}
	fmt.Fprintln(w, "sekisho sidecar: (--print-config shows the config the flags stand for)")
}

// sidecarConfig writes the config file the flags stand for. The sidecar is
// an ordinary config: the same engine serves it, and --print-config shows it
// so that a user can move on to a file.
func sidecarConfig(f sidecarFlags) ([]byte, error) {
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if f.clientCA != "" && f.tlsCert == "" {
		return nil, errors.New("--client-ca needs --tls-cert and --tls-key")
	}
	if f.readinessPath != "" && !strings.HasPrefix(f.readinessPath, "/") {
		return nil, fmt.Errorf("--readiness-path %q must start with /", f.readinessPath)
	}
	public := f.adminPublic != "" && f.adminPublic != "off"
	if public {
		// The config's validation says more (a bad port, a host name); these
		// are told here in terms of the flags.
		if _, _, err := net.SplitHostPort(f.adminPublic); err != nil {
			return nil, fmt.Errorf("--admin-public %q is not host:port", f.adminPublic)
		}
		if config.ListenClash(f.adminPublic, f.admin) {
			return nil, fmt.Errorf("--admin-public %q is also --admin %q; the read-only listener needs an address of its own", f.adminPublic, f.admin)
		}
		if config.ListenClash(f.listen, f.adminPublic) {
			return nil, fmt.Errorf("--listen %q is also --admin-public %q; each needs an address of its own", f.listen, f.adminPublic)
		}
	}
	if f.admin != "off" && config.ListenClash(f.listen, f.admin) {
		return nil, fmt.Errorf("--listen %q is also --admin %q; each needs an address of its own", f.listen, f.admin)
	}
	var b strings.Builder
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	fmt.Fprintf(&b, "# sekisho sidecar: generated from flags; save it and run `sekisho run -config FILE` to graduate.\n")
	fmt.Fprintf(&b, "version: 1\nadmin:\n  listen: %s\n", q(f.admin))
	if public {
		fmt.Fprintf(&b, "  public_listen: %s\n", q(f.adminPublic))
	}
	fmt.Fprintf(&b, "listeners:\n  - name: sidecar\n    listen: %s\n", q(f.listen))
	if f.tlsCert != "" {
		fmt.Fprintf(&b, "    tls:\n      certificates:\n        - {cert_file: %s, key_file: %s}\n", q(f.tlsCert), q(f.tlsKey))
		if f.clientCA != "" {
			fmt.Fprintf(&b, "      client_ca_file: %s\n      forward_client_cert: true\n", q(f.clientCA))
		}
	}
	fmt.Fprintf(&b, "    routes:\n      - name: upstream\n        pipeline:\n          - proxy: local\n")
	fmt.Fprintf(&b, "pools:\n  local:\n    endpoints: [%s]\n", q(f.upstream))
	path, expect := f.readinessPath, "200-299"
	if path == "" {
		path, expect = "/", "100-499"
	}
	fmt.Fprintf(&b, "    readiness:\n      path: %s\n      interval: 2s\n      timeout: 1s\n      rise: 1\n      fall: 2\n      expect_status: [%s]\n", q(path), q(expect))
	// The pod is ready only when the service behind the sidecar is.
	fmt.Fprintf(&b, "      gates_readyz: true\n")
	return []byte(b.String()), nil
}
