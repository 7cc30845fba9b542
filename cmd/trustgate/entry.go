package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/trustgate/trustgate/broker"
)

func printJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newEntryCmd() *cobra.Command {
	af := &adminFlags{}
	cmd := &cobra.Command{Use: "entry", Short: "Manage registration entries on a broker"}
	af.register(cmd)

	var (
		spiffeID, parentID string
		selectors, dns     []string
		x509TTL, jwtTTL    time.Duration
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a registration entry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			e := broker.Entry{SPIFFEID: spiffeID, ParentID: parentID, DNSNames: dns,
				X509SVIDTTL: int64(x509TTL / time.Second), JWTSVIDTTL: int64(jwtTTL / time.Second)}
			for _, s := range selectors {
				sel, err := broker.ParseSelector(s)
				if err != nil {
					return err
				}
				e.Selectors = append(e.Selectors, sel)
			}
			out, err := c.CreateEntry(cmd.Context(), e)
			if err != nil {
				return err
			}
			return printJSON(cmd, out)
		},
	}
	f := create.Flags()
	f.StringVar(&spiffeID, "spiffeID", "", "SPIFFE ID the entry grants")
	f.StringVar(&parentID, "parentID", "", "SPIFFE ID of the parent (spiffe://<td>/spire/server for a node alias)")
	f.StringArrayVar(&selectors, "selector", nil, "selector type:value (repeat for several)")
	f.StringArrayVar(&dns, "dns", nil, "DNS name for X.509-SVIDs (repeat for several)")
	f.DurationVar(&x509TTL, "x509SVIDTTL", 0, "X.509-SVID TTL (0: server default)")
	f.DurationVar(&jwtTTL, "jwtSVIDTTL", 0, "JWT-SVID TTL (0: server default)")

	var listParent, listID string
	list := &cobra.Command{
		Use:   "list",
		Short: "List registration entries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			out, err := c.ListEntries(cmd.Context(), listParent, listID)
			if err != nil {
				return err
			}
			return printJSON(cmd, broker.EntryList{Entries: out})
		},
	}
	list.Flags().StringVar(&listParent, "parentID", "", "only entries with this parent")
	list.Flags().StringVar(&listID, "spiffeID", "", "only entries with this SPIFFE ID")

	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a registration entry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			if err := c.DeleteEntry(cmd.Context(), args[0]); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", args[0])
			return err
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}
