package config

import (
	"net/url"
	"strings"
)

// DSNSettings returns the keywords written in a libpq connection string,
// keyword/value or URL, without defaults or environment. Unlike
// pgconn.ParseConfig it reads no file the string names (certificates, keys,
// passfile), so it works on a string meant for another host, such as a
// replica's primary_conninfo. It may return a password: never print it.
func DSNSettings(dsn string) map[string]string {
	out := map[string]string{}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return out
		}
		for k, v := range u.Query() {
			if len(v) > 0 {
				out[k] = v[0]
			}
		}
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				out["password"] = pw
			}
		}
		return out
	}
	s := dsn
	for {
		s = strings.TrimLeft(s, " \t\n\r")
		if s == "" {
			return out
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return out
		}
		key := strings.TrimSpace(s[:eq])
		s = strings.TrimLeft(s[eq+1:], " \t\n\r")
		var val strings.Builder
		if strings.HasPrefix(s, "'") {
			s = s[1:]
			for len(s) > 0 && s[0] != '\'' {
				if s[0] == '\\' && len(s) > 1 {
					s = s[1:]
				}
				val.WriteByte(s[0])
				s = s[1:]
			}
			if len(s) > 0 {
				s = s[1:]
			}
		} else {
			for len(s) > 0 && !strings.ContainsRune(" \t\n\r", rune(s[0])) {
				if s[0] == '\\' && len(s) > 1 {
					s = s[1:]
				}
				val.WriteByte(s[0])
				s = s[1:]
			}
		}
		out[key] = val.String()
	}
}

// TLSKeywords are the libpq keywords that say how a connection is secured,
// in the order connection strings built by replctl write them. sslpassword
// is not among them: it is a secret (see TLSSettings).
var TLSKeywords = []string{
	"sslmode", "sslnegotiation", "sslrootcert", "sslcert", "sslkey", "sslcertmode",
	"sslcrl", "sslcrldir", "sslsni", "sslcompression",
	"ssl_min_protocol_version", "ssl_max_protocol_version", "channel_binding",
}

// TLSSettings returns the TLS keywords written in dsn (see TLSKeywords), as
// keyword/value pairs in TLSKeywords order: what a connection string built
// from this DSN for another client (a replica's primary_conninfo, the write
// probe) must carry so that it is secured the same way. It never returns
// sslpassword, which would turn a setting anyone with pg_read_all_settings
// reads into a place a secret leaks from.
func TLSSettings(dsn string) [][2]string {
	set := DSNSettings(dsn)
	var out [][2]string
	for _, k := range TLSKeywords {
		if v, ok := set[k]; ok && v != "" {
			out = append(out, [2]string{k, v})
		}
	}
	return out
}
