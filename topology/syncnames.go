package topology

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// Synchronous replication methods of synchronous_standby_names.
const (
	SyncFirst = "FIRST" // priority-based: the first Num connected names in list order
	SyncAny   = "ANY"   // quorum-based: any Num of the names
)

// SyncStandbys is synchronous_standby_names parsed: commits wait for Num
// standbys among Names, chosen by Method. The zero value means synchronous
// replication is off.
type SyncStandbys struct {
	Method string   `json:"method"`
	Num    int      `json:"num"`
	Names  []string `json:"names"`
}

// Enabled reports whether commits wait for any standby.
func (s SyncStandbys) Enabled() bool { return s.Num > 0 && len(s.Names) > 0 }

// Matches reports whether a walsender's application_name is one of the
// names. PostgreSQL compares them case-insensitively and "*" matches any.
func (s SyncStandbys) Matches(applicationName string) bool {
	for _, n := range s.Names {
		if n == "*" || strings.EqualFold(n, applicationName) {
			return true
		}
	}
	return false
}

// String writes the setting back in its canonical form.
func (s SyncStandbys) String() string {
	if !s.Enabled() {
		return ""
	}
	return fmt.Sprintf("%s %d (%s)", s.Method, s.Num, strings.Join(s.Names, ", "))
}

// CanonicalSyncStandbyNames is a synchronous_standby_names value in one
// spelling, so that "any 1 (\"pg3\")" and "ANY 1 (pg3)" compare equal;
// an unparsable one as it is.
func CanonicalSyncStandbyNames(s string) string {
	ss, err := ParseSyncStandbyNames(s)
	if err != nil {
		return s
	}
	return ss.String()
}

// ParseSyncStandbyNames parses synchronous_standby_names with PostgreSQL's
// grammar: "FIRST k (a, b)", "ANY k (a, b)", the older "k (a, b)" (FIRST),
// or a plain list "a, b" (FIRST 1). Names may be double-quoted.
func ParseSyncStandbyNames(s string) (SyncStandbys, error) {
	toks, err := syncTokens(s)
	if err != nil {
		return SyncStandbys{}, err
	}
	if len(toks) == 0 {
		return SyncStandbys{}, nil
	}
	bad := func(why string) (SyncStandbys, error) {
		return SyncStandbys{}, fmt.Errorf("invalid synchronous_standby_names %q: %s", s, why)
	}
	out := SyncStandbys{Method: SyncFirst, Num: 1}
	i := 0
	if t := toks[0]; !t.quoted && (strings.EqualFold(t.text, SyncFirst) || strings.EqualFold(t.text, SyncAny)) {
		out.Method = strings.ToUpper(t.text)
		if len(toks) < 2 || !toks[1].isNum() {
			return bad("expected a number after " + out.Method)
		}
		i = 1
	}
	if toks[i].isNum() && len(toks) > i+1 && toks[i+1].text == "(" && !toks[i+1].quoted {
		n, err := strconv.Atoi(toks[i].text)
		if err != nil || n <= 0 {
			return bad("the number of synchronous standbys must be positive")
		}
		out.Num = n
		if toks[len(toks)-1].text != ")" || toks[len(toks)-1].quoted {
			return bad("missing closing parenthesis")
		}
		toks = toks[i+2 : len(toks)-1]
	} else if i == 1 {
		return bad("expected a parenthesised list after " + out.Method)
	}
	// toks is now a comma-separated list of names.
	for j, t := range toks {
		switch {
		case j%2 == 1:
			if t.text != "," || t.quoted {
				return bad(fmt.Sprintf("expected a comma before %q", t.text))
			}
		case !t.quoted && (t.text == "," || t.text == "(" || t.text == ")"):
			return bad(fmt.Sprintf("unexpected %q", t.text))
		default:
			out.Names = append(out.Names, t.text)
		}
	}
	if len(toks) == 0 || len(toks)%2 == 0 {
		return bad("empty or unterminated list of standby names")
	}
	return out, nil
}

type syncToken struct {
	text   string
	quoted bool
}

func (t syncToken) isNum() bool {
	if t.quoted || t.text == "" {
		return false
	}
	for _, r := range t.text {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func syncTokens(s string) ([]syncToken, error) {
	var out []syncToken
	r := []rune(s)
	for i := 0; i < len(r); {
		c := r[i]
		switch {
		case unicode.IsSpace(c):
			i++
		case c == ',' || c == '(' || c == ')':
			out = append(out, syncToken{text: string(c)})
			i++
		case c == '"':
			var b strings.Builder
			i++
			closed := false
			for i < len(r) {
				if r[i] == '"' {
					if i+1 < len(r) && r[i+1] == '"' {
						b.WriteRune('"')
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				b.WriteRune(r[i])
				i++
			}
			if !closed {
				return nil, fmt.Errorf("invalid synchronous_standby_names %q: unterminated quoted name", s)
			}
			out = append(out, syncToken{text: b.String(), quoted: true})
		default:
			j := i
			for j < len(r) && !unicode.IsSpace(r[j]) && !strings.ContainsRune(",()\"", r[j]) {
				j++
			}
			out = append(out, syncToken{text: string(r[i:j])})
			i = j
		}
	}
	return out, nil
}
