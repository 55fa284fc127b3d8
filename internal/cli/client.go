package cli

import "github.com/spf13/cobra"

// addClientCommands adds the commands that talk to a server over HTTP.
func addClientCommands(root *cobra.Command) {}
