package control

import "errors"

var (
	// ErrInvalid: the message or the subscription it carries is not valid
	// (not a CloudEvent, malformed or unknown data fields, a bad Ref, a
	// route that does not exist, a subject or key that does not match the
	// watcher). Subscriptions implementations wrap it for bad input.
	ErrInvalid = errors.New("invalid control message")
	// ErrOwned: the watcher is defined in the configuration file, which
	// wins over the control channel.
	ErrOwned = errors.New("watcher is defined in the configuration file")
	// ErrDenied: the policy does not allow what the message watches or
	// queries.
	ErrDenied = errors.New("denied by the control policy")
	// ErrTooLarge: the message is larger than control.maxMessageBytes.
	ErrTooLarge = errors.New("control message too large")
	// ErrUnsupported: a specversion, type, data content type or event
	// format this bridge does not accept.
	ErrUnsupported = errors.New("unsupported control message")
)
