// Package control is depbridge's run-time subscription channel: control
// messages on the bus apply, delete and query subscriptions (the same
// config.Subscription model as the configuration file), and the bridge
// answers each with a status event. docs/control.md documents the
// messages, subjects, topics and keys for users.
//
// Messages are CloudEvents 1.0, structured (application/cloudevents+json)
// or binary, by the NATS and Kafka protocol bindings: TypeApply (data: a
// subscription), TypeDelete (data: the watcher), TypeQuery (data: a
// watcher and a batch of queries that become its exact dependencies; the
// answer carries what they find), each answered by a TypeStatus event
// whose correlationid extension is the request's id. Decoder reads them
// strictly; CheckPolicy says what the control channel may watch and
// query; Subscriptions is what they change (the bridge implements it over
// its engine).
//
// Guarantees, on both transports (NATS and Kafka):
//
//   - Durable. Messages are stored on the bus, keeping the last one of each
//     watcher (a JetStream stream with one message per subject, a
//     compacted Kafka topic keyed by watcher). At start the transport
//     replays them, in order, before Synced is closed: the program reports
//     ready only then. Replayed messages get no status and no reply again.
//   - A replay that fails for a while is retried. A replayed message that
//     fails for a reason that may pass (anything but the final rejections:
//     too large, unsupported, invalid, denied, owned) is neither rejected
//     nor counted: it is handled again with backoff (1s doubling to 30s),
//     in order with its watcher's messages, until it is carried out
//     (counted once, as accepted) or a newer message of its watcher
//     replaces it. Failures lists it meanwhile, and the program is not
//     ready.
//   - A bad message changes nothing. A malformed, oversized, unsupported,
//     policy-denied or otherwise rejected message leaves the subscriptions
//     as they were, gets a status event saying why (when it can be
//     correlated at all), and is counted (Metrics). The bus is put back
//     too: the watcher's last accepted message is stored again, or the
//     rejected one removed, so that a restart does not apply what was
//     refused, nor lose what was accepted before it.
//   - Stopping is not rejecting. A message that fails because the channel
//     is stopping (its context done mid-call) was not carried out: it gets
//     no status, is not counted or undone, and stays on the bus for the
//     next start's replay.
//   - The policy sees what the engine will do. A namespace given for a
//     cluster-scoped kind is ignored by the engine, so the policy judges
//     such a Ref as one with no namespace; the transports learn the scope
//     from the Subscriptions (KindResolver).
//   - Ordered per watcher, concurrent across watchers. One watcher's
//     messages are handled one at a time, in bus order; different
//     watchers' by Options.Workers workers, so that a slow one (at most
//     Options.MessageTimeout) does not hold up the others.
//   - Bounded. Messages are size-checked before they are parsed; at most
//     Options.MaxPending are read ahead; each Subscriptions call is bounded
//     by Options.MessageTimeout.
//   - Nothing leaks. Start blocks until its context is done and returns
//     after every goroutine it started has exited. Credentials never reach
//     the logs.
package control
