package cmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/olekukonko/tablewriter"
	"github.com/olekukonko/tablewriter/renderer"
	"github.com/olekukonko/tablewriter/tw"
	"go.yaml.in/yaml/v3"
)

// render writes v as JSON or YAML, or calls table for the table format. JSON
// and YAML come from the same struct and the same JSON field names, so the
// two machine formats can never drift apart.
func render(s *IOStreams, format string, v any, table func(w io.Writer) error) error {
	switch format {
	case "json":
		enc := json.NewEncoder(s.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := toYAML(v)
		if err != nil {
			return err
		}
		_, err = s.Out.Write(b)
		return err
	default:
		if table == nil {
			return fmt.Errorf("no table rendering for this result")
		}
		return table(s.Out)
	}
}

// toYAML converts through JSON so field names and order match -o json.
func toYAML(v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(j, &n); err != nil {
		return nil, err
	}
	blockStyle(&n)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

func blockStyle(n *yaml.Node) {
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		n.Style = 0
	}
	if n.Kind == yaml.ScalarNode && n.Style == yaml.DoubleQuotedStyle {
		// Keep quotes only where YAML needs them (e.g. "null" as a string).
		n.Style = 0
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// writeTable renders a header and rows. On a terminal it draws light box
// lines; otherwise it prints plain aligned columns that grep and awk handle.
func writeTable(w io.Writer, tty bool, header []string, rows [][]string) error {
	var rend tw.Renderer
	if tty {
		rend = renderer.NewBlueprint(tw.Rendition{Symbols: tw.NewSymbols(tw.StyleLight)})
	} else {
		rend = renderer.NewBlueprint(tw.Rendition{
			Borders: tw.BorderNone,
			Symbols: tw.NewSymbols(tw.StyleNone),
			Settings: tw.Settings{
				Separators: tw.Separators{BetweenColumns: tw.Off, BetweenRows: tw.Off},
				Lines:      tw.Lines{ShowHeaderLine: tw.Off, ShowTop: tw.Off, ShowBottom: tw.Off},
			},
		})
	}
	out := w
	var buf bytes.Buffer
	if !tty {
		out = &buf
	}
	t := tablewriter.NewTable(out,
		tablewriter.WithRenderer(rend),
		tablewriter.WithHeaderAutoFormat(tw.Off),
		tablewriter.WithRowAutoWrap(tw.WrapNone),
		tablewriter.WithHeaderAlignment(tw.AlignLeft),
		tablewriter.WithRowAlignment(tw.AlignLeft),
		tablewriter.WithTrimSpace(tw.Off),
	)
	t.Header(header)
	for _, r := range rows {
		if err := t.Append(r); err != nil {
			return err
		}
	}
	if err := t.Render(); err != nil || tty {
		return err
	}
	_, err := io.WriteString(w, plainLines(buf.String()))
	return err
}

// plainLines strips the cell padding tablewriter puts around a borderless
// table: the one space every line starts with and the spaces that end each
// line, so that piped rows are plain columns for grep and awk (a tree's
// indentation in the first column stays).
func plainLines(s string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	lead := true
	for _, l := range lines {
		if l != "" && !strings.HasPrefix(l, " ") {
			lead = false
		}
	}
	for i, l := range lines {
		if lead {
			l = strings.TrimPrefix(l, " ")
		}
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n") + "\n"
}
