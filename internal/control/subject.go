package control

import (
	"errors"
	"fmt"
	"strings"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/sink"
)

// WatcherSubject is the NATS subject of watcher's control messages, in
// the control stream: "<prefix>.watcher." followed by six tokens, the
// watcher's group, version, kind, namespace, name and selector, each
// escaped with sink.EscapeToken (so an empty value is "_" and "my.cm" is
// "my_2Ecm"). watcher must be canonical (cache.Ref.Canonical), as decoded
// messages' watchers are. For example the watcher {group: apps, version:
// v1, kind: Deployment, namespace: demo, name: web} has the subject
// "depbridge.control.watcher.apps.v1.Deployment.demo.web._".
func WatcherSubject(prefix string, watcher cache.Ref) string {
	return prefix + ".watcher." + watcherTokens(watcher)
}

// StatusSubject is the NATS subject of the status events of watcher's
// control messages: "<prefix>.status." followed by the six tokens of
// WatcherSubject.
func StatusSubject(prefix string, watcher cache.Ref) string {
	return prefix + ".status." + watcherTokens(watcher)
}

// QuerySubject is the NATS subject of query requests: "<prefix>.query".
func QuerySubject(prefix string) string { return prefix + ".query" }

// StatusTopic is the Kafka topic of status events: "<topic>.status".
func StatusTopic(topic string) string { return topic + ".status" }

func watcherTokens(w cache.Ref) string {
	return strings.Join([]string{
		sink.EscapeToken(w.Group), sink.EscapeToken(w.Version), sink.EscapeToken(w.Kind),
		sink.EscapeToken(w.Namespace), sink.EscapeToken(w.Name), sink.EscapeToken(w.Selector),
	}, ".")
}

// checkSubjectPrefix accepts a NATS subject prefix: dot-separated
// non-empty tokens with no whitespace, control characters or wildcards.
func checkSubjectPrefix(s string) error {
	if s == "" {
		return errors.New("empty subject")
	}
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" {
			return fmt.Errorf("subject %q has an empty token", s)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c <= ' ' || c == 0x7F || c == '*' || c == '>' {
				return fmt.Errorf("subject %q contains %q", s, c)
			}
		}
	}
	return nil
}
