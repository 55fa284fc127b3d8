// Package cli is the batchd command line: the server (serve), key
// management on the data dir (keys), and client commands that speak the
// Anthropic API through the official Go SDK, so they work against batchd
// and against api.anthropic.com alike.
package cli

import (
	"github.com/spf13/cobra"
)

// NewRootCommand returns the batchd command tree.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "batchd",
		Short:         "A self-hosted, Anthropic-compatible Message Batches server and client",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCommand(), newKeysCommand())
	addClientCommands(root)
	return root
}
