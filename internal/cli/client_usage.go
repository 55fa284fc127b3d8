package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/batchd/batchd/internal/cost"
)

func newUsageCommand() *cobra.Command {
	var (
		since, until, by string
		asJSON           bool
	)
	cmd := &cobra.Command{
		Use:   "usage [ID]",
		Short: "Print the tokens and cost of a batch, or of the workspace (--since)",
		Long: `Print the tokens and cost of a batch's succeeded requests by model, at the
batch price (half the standard price) beside the standard price; without ID,
the workspace's usage by model, day or batch (--by) from --since.`,
		Args: cobra.MaximumNArgs(1),
	}
	conn := addConnFlags(cmd)
	cmd.Flags().StringVar(&since, "since", "", "from this day: a date (2026-12-01), an RFC 3339 time or a duration back (7d, 36h)")
	cmd.Flags().StringVar(&until, "until", "", "up to this day (included), in the same forms")
	cmd.Flags().StringVar(&by, "by", "model", "group the workspace's usage by model, day or batch")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the server's JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		w := cmd.OutOrStdout()
		if len(args) == 1 {
			if since != "" || until != "" || cmd.Flags().Changed("by") {
				return fmt.Errorf("--since, --until and --by are for the workspace's usage, not a batch's")
			}
			raw, err := webhookCall(cmd.Context(), conn, http.MethodGet, "v1/messages/batches/"+url.PathEscape(args[0])+"/usage", nil, false)
			if err != nil {
				return fmt.Errorf("get usage: %w", err)
			}
			if asJSON {
				return printRawJSON(w, raw)
			}
			var u cost.Report
			if err := json.Unmarshal(raw, &u); err != nil {
				return fmt.Errorf("read usage: %w", err)
			}
			writeUsageTable(w, "", []namedUsage{{"", u}})
			return nil
		}
		q := url.Values{"group_by": {by}}
		if since != "" {
			q.Set("from", since)
		}
		if until != "" {
			q.Set("to", until)
		}
		raw, err := webhookCall(cmd.Context(), conn, http.MethodGet, "v1/usage?"+q.Encode(), nil, false)
		if err != nil {
			return fmt.Errorf("get usage: %w", err)
		}
		if asJSON {
			return printRawJSON(w, raw)
		}
		var rep struct {
			GroupBy string `json:"group_by"`
			Data    []struct {
				Group string `json:"group"`
				cost.Report
			} `json:"data"`
		}
		if err := json.Unmarshal(raw, &rep); err != nil {
			return fmt.Errorf("read usage: %w", err)
		}
		groups := make([]namedUsage, 0, len(rep.Data))
		for _, g := range rep.Data {
			groups = append(groups, namedUsage{g.Group, g.Report})
		}
		writeUsageTable(w, strings.ToUpper(rep.GroupBy), groups)
		return nil
	}
	return cmd
}

type namedUsage struct {
	name string
	u    cost.Report
}

// writeUsageTable prints one row per group and model, then the sum.
func writeUsageTable(w io.Writer, groupCol string, groups []namedUsage) {
	const row = "%-28s %12v %12v %12v %12v %12v %12s %12s\n"
	if groupCol != "" && groupCol != "MODEL" {
		fmt.Fprintf(w, "%-34s ", groupCol)
	}
	fmt.Fprintf(w, row, "MODEL", "INPUT", "OUTPUT", "CACHE_W_5M", "CACHE_W_1H", "CACHE_READ", "BATCH_USD", "STANDARD_USD")
	var batchUSD, stdUSD, saving float64
	var unpriced []string
	for _, g := range groups {
		for _, m := range g.u.Models {
			if groupCol != "" && groupCol != "MODEL" {
				fmt.Fprintf(w, "%-34s ", g.name)
			}
			cost, std := "-", "-"
			if m.Priced {
				cost, std = fmt.Sprintf("%.4f", m.BatchUSD), fmt.Sprintf("%.4f", m.StandardUSD)
			}
			t := m.Tokens
			fmt.Fprintf(w, row, m.Model, t.Input, t.Output, t.CacheWrite5m, t.CacheWrite1h, t.CacheRead, cost, std)
		}
		batchUSD += g.u.BatchUSD
		stdUSD += g.u.StandardUSD
		saving += g.u.SavingUSD
		unpriced = append(unpriced, g.u.Unpriced...)
	}
	fmt.Fprintf(w, "cost: $%.4f at batch price, $%.4f at standard price, saved $%.4f\n", batchUSD, stdUSD, saving)
	if len(unpriced) > 0 {
		fmt.Fprintf(w, "no price for: %s (add one under [[prices]] in the config file)\n", strings.Join(uniq(unpriced), ", "))
	}
}

func uniq(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}
