// Package cli is the batchd command line: the server (serve), key
// management on the data dir (keys), and client commands that speak the
// Anthropic API through the official Go SDK, so they work against batchd
// and against api.anthropic.com alike.
package cli

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// Version is batchd's version, set by cmd/batchd (from -ldflags "-X
// main.version=..."); empty means: from the build information.
var Version string

// versionString is what `batchd --version` prints: Version, else the
// module version and VCS revision the binary was built from.
func versionString() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if rev != "" {
		v += " (" + rev[:min(12, len(rev))] + modified + ")"
	}
	return v + " " + info.GoVersion
}

// argsNamed requires exactly the positional arguments that cmd.Use names
// ("results ID" → ID), and says which is missing rather than cobra's
// "accepts 1 arg(s), received 0". A name ending in "..." may repeat.
func argsNamed(cmd *cobra.Command, args []string) error {
	var names []string // the positional names, before any flag in Use
	for _, f := range strings.Fields(cmd.Use)[1:] {
		if strings.HasPrefix(f, "-") {
			break
		}
		names = append(names, f)
	}
	variadic := len(names) > 0 && strings.HasSuffix(names[len(names)-1], "...")
	if len(args) < len(names) {
		return fmt.Errorf("missing %s: usage: %s", strings.TrimSuffix(names[len(args)], "..."), cmd.UseLine())
	}
	if len(args) > len(names) && !variadic {
		return fmt.Errorf("unexpected argument %q: usage: %s", args[len(names)], cmd.UseLine())
	}
	return nil
}

// NewRootCommand returns the batchd command tree.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "batchd",
		Short:         "A self-hosted, Anthropic-compatible Message Batches server and client",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       versionString(),
	}
	root.SetVersionTemplate("batchd {{.Version}}\n")
	root.AddCommand(newServeCommand(), newKeysCommand(), newMigrateCommand())
	addClientCommands(root)
	return root
}
