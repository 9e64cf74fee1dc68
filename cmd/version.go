package cmd

import (
	"context"
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// VersionOptions are the inputs of replctl version.
type VersionOptions struct {
	IO     *IOStreams
	Output string
}

type versionInfo struct {
	Version string `json:"version"`
	Go      string `json:"go"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
}

func newCmdVersion(f *Factory, runF func(context.Context, *VersionOptions) error) *cobra.Command {
	o := &VersionOptions{IO: f.IO}
	return &cobra.Command{
		Use:   "version",
		Short: "Print replctl's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.Output = f.Output
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runVersion(cmd.Context(), o)
		},
	}
}

func runVersion(_ context.Context, o *VersionOptions) error {
	v := versionInfo{Version: Version, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if o.Output == "table" {
		_, err := fmt.Fprintf(o.IO.Out, "replctl %s (%s %s/%s)\n", v.Version, v.Go, v.OS, v.Arch)
		return err
	}
	return render(o.IO, o.Output, v, nil)
}
