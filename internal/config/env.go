package config

import (
	"errors"
	"fmt"
	"strings"
)

// expandEnv replaces "${NAME}" references in the credential fields with the
// value of environment variable NAME: the user, password and token of NATS
// and JetStream sinks, the SASL username and password of Kafka sinks, and
// the header values of HTTP sinks. A reference to an unset variable (a
// variable set to "" is set) or a malformed one ("${", "${1X}") is an error
// naming the field; the value itself is never echoed. Expansion is a single
// pass: a variable's value is not expanded again. There is no escape for a
// literal "${": put such a value in an environment variable.
//
// Written here rather than with os.Expand, which also expands $NAME and so
// would corrupt passwords that contain a "$".
func (c *Config) expandEnv(lookup func(string) (string, bool)) error {
	var errs []*FieldError
	expand := func(path string, s *string) {
		v, err := expandString(*s, lookup)
		if err != nil {
			errs = append(errs, c.fieldError(path, err.Error()))
			return
		}
		*s = v
	}
	for i := range c.Sinks {
		s := &c.Sinks[i]
		base := fmt.Sprintf("sinks[%d]", i)
		if s.NATS != nil {
			expandConn(base+".nats", &s.NATS.NATSConn, expand)
		}
		if s.JetStream != nil {
			expandConn(base+".jetstream", &s.JetStream.NATSConn, expand)
		}
		if s.Kafka != nil && s.Kafka.SASL != nil {
			expand(base+".kafka.sasl.username", &s.Kafka.SASL.Username)
			expand(base+".kafka.sasl.password", &s.Kafka.SASL.Password)
		}
		if s.HTTP != nil {
			for _, k := range sortedKeys(s.HTTP.Headers) {
				v := s.HTTP.Headers[k]
				expand(fmt.Sprintf("%s.http.headers[%q]", base, k), &v)
				s.HTTP.Headers[k] = v
			}
		}
	}
	return joinFieldErrors(errs)
}

func expandConn(base string, c *NATSConn, expand func(string, *string)) {
	expand(base+".user", &c.User)
	expand(base+".password", &c.Password)
	expand(base+".token", &c.Token)
}

// expandString expands the "${NAME}" references in s.
func expandString(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		s = s[i+2:]
		j := strings.IndexByte(s, '}')
		if j < 0 {
			return "", errors.New(`"${" without a closing "}"`)
		}
		name := s[:j]
		if !isEnvName(name) {
			// Not echoed: a malformed reference may be part of a literal secret.
			return "", errors.New(`"${...}" must enclose an environment variable name ([A-Za-z_][A-Za-z0-9_]*)`)
		}
		v, ok := lookup(name)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		b.WriteString(v)
		s = s[j+1:]
	}
}

func isEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z':
		case '0' <= r && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
