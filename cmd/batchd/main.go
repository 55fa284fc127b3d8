// Command batchd is a self-hosted, Anthropic-compatible Message Batches
// server and its command-line client.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/batchd/batchd/internal/cli"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version string

func main() {
	cli.Version = version
	if err := cli.NewRootCommand().Execute(); err != nil {
		var ee *cli.ExitError
		if errors.As(err, &ee) {
			if ee.Err != nil {
				fmt.Fprintln(os.Stderr, "batchd:", ee.Err)
			}
			os.Exit(ee.Code)
		}
		fmt.Fprintln(os.Stderr, "batchd:", err)
		os.Exit(1)
	}
}
