package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the module version, VCS revision and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			bi, ok := debug.ReadBuildInfo()
			if !ok {
				bi = nil
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), versionString(version, bi))
			return err
		},
	}
}

// versionString describes a build: the version set at link time or else
// the module's, then the VCS revision, commit time and a "+dirty" mark
// that `go build` records, and the Go version.
func versionString(linked string, bi *debug.BuildInfo) string {
	v, goVersion, rev, at, dirty := linked, "unknown", "unknown", "", ""
	if bi != nil {
		goVersion = bi.GoVersion
		if v == "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = ", " + s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
	}
	if v == "" || v == "(devel)" {
		v = "dev"
	}
	return fmt.Sprintf("trustgate %s (revision %s%s%s, %s)", v, rev, dirty, at, goVersion)
}
