package config

import (
	"net/url"
	"regexp"
	"strings"
)

var (
	kvPassword   = regexp.MustCompile(`(?i)((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]*)`)
	urlUserinfo  = regexp.MustCompile(`(?i)(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@`)
	urlPassParam = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)[^&\s]*`)
)

// RedactDSN removes passwords from a libpq connection string, keyword/value
// or URL, keeping the rest as the user wrote it. It works on strings that do
// not parse too, since those end up in error messages.
func RedactDSN(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			if u.User != nil {
				u.User = url.User(u.User.Username())
			}
			q := u.Query()
			changed := false
			for _, k := range []string{"password", "sslpassword"} {
				if q.Has(k) {
					q.Del(k)
					changed = true
				}
			}
			if changed {
				u.RawQuery = q.Encode()
			}
			return u.String()
		}
		s := urlUserinfo.ReplaceAllString(dsn, "$1@")
		return urlPassParam.ReplaceAllString(s, "$1")
	}
	s := kvPassword.ReplaceAllString(dsn, "")
	return strings.Join(strings.Fields(s), " ")
}

// Scrub removes from text every password found in the given connection
// strings, and anything shaped like a password assignment, so an error from
// a driver can be shown safely.
func Scrub(text string, dsns ...string) string {
	for _, d := range dsns {
		for _, p := range passwords(d) {
			if p != "" {
				text = strings.ReplaceAll(text, p, "********")
			}
		}
	}
	text = kvPassword.ReplaceAllString(text, "${1}********")
	text = urlUserinfo.ReplaceAllString(text, "$1:********@")
	return urlPassParam.ReplaceAllString(text, "${1}********")
}

// passwords extracts the literal password values of a connection string.
func passwords(dsn string) []string {
	var out []string
	for _, m := range kvPassword.FindAllStringSubmatch(dsn, -1) {
		v := strings.Trim(m[2], "'")
		if len(v) >= 3 {
			out = append(out, v, m[2])
		}
	}
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && len(p) >= 3 {
			out = append(out, p, url.QueryEscape(p))
		}
		for _, k := range []string{"password", "sslpassword"} {
			if p := u.Query().Get(k); len(p) >= 3 {
				out = append(out, p)
			}
		}
	}
	return out
}

// ScrubbedError is an error whose text has its passwords masked, that still
// unwraps to the original: errors.Is and errors.As (a *pgconn.PgError's
// SQLSTATE, context.DeadlineExceeded) see through it, while Error() never
// shows a secret.
type ScrubbedError struct {
	err  error
	text string
}

// ScrubError wraps err so that its text is scrubbed of dsns' passwords, and
// prefixes it with prefix (e.g. the node's name) when not empty. Nil stays
// nil.
func ScrubError(err error, prefix string, dsns ...string) error {
	if err == nil {
		return nil
	}
	text := Scrub(err.Error(), dsns...)
	if prefix != "" {
		text = prefix + ": " + text
	}
	return &ScrubbedError{err: err, text: text}
}

func (e *ScrubbedError) Error() string { return e.text }

// Unwrap returns the original error, for errors.Is and errors.As only:
// never print it.
func (e *ScrubbedError) Unwrap() error { return e.err }
