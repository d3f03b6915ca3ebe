package control

import (
	"time"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// CloudEvents types of control messages. The version suffix changes when
// the data changes incompatibly.
const (
	// TypeApply adds or replaces a watcher's subscription; its data is an
	// ApplyData.
	TypeApply = "io.depbridge.control.apply.v1"
	// TypeDelete removes a watcher's subscription; its data is a
	// DeleteData.
	TypeDelete = "io.depbridge.control.delete.v1"
	// TypeQuery makes a batch of queries a watcher's exact dependencies and
	// returns what they find; its data is a QueryData.
	TypeQuery = "io.depbridge.control.query.v1"
	// TypeStatus is the bridge's answer to each control message; its data
	// is a StatusData.
	TypeStatus = "io.depbridge.control.status.v1"
)

// Extension attributes of control messages.
const (
	// ExtCorrelationID, on a status event, is the id of the request it
	// answers.
	ExtCorrelationID = "correlationid"
	// ExtReplyTo, on a NATS request, names a subject that receives the
	// status event too.
	ExtReplyTo = "replyto"
)

// ApplyData is the data of TypeApply: a subscription, with the field names
// and JSON of the configuration file's subscriptions.
type ApplyData = config.Subscription

// DeleteData is the data of TypeDelete.
type DeleteData struct {
	Watcher cache.Ref `json:"watcher"`
}

// QueryData is the data of TypeQuery.
type QueryData struct {
	Watcher cache.Ref `json:"watcher"`
	// Queries, by name or selector, become the watcher's exact
	// dependencies: what it had and does not query again is dropped.
	Queries []cache.Ref `json:"queries"`
	// Route of the watcher's reconcile requests. Defaults to
	// control.route.
	Route string `json:"route,omitempty"`
	// InitialReconcile sends a request when the watcher starts to depend
	// on objects that exist. Defaults to true.
	InitialReconcile *bool `json:"initialReconcile,omitempty"`
}

// StatusData is the data of TypeStatus.
type StatusData struct {
	// RequestID is the id of the request (also in the correlationid
	// extension); for a Kafka tombstone, "<topic>/<partition>@<offset>".
	RequestID string `json:"requestId"`
	// RequestType is the request's type; empty when it could not be read.
	RequestType string `json:"requestType,omitempty"`
	// Watcher of the request; absent when it could not be read.
	Watcher *cache.Ref `json:"watcher,omitempty"`
	// Accepted says the request took effect. When false nothing changed.
	Accepted bool `json:"accepted"`
	// Reason says why the request was rejected.
	Reason string `json:"reason,omitempty"`
	// Results of an accepted query, one per query in order.
	Results []QueryResult `json:"results,omitempty"`
	// ObjectsOmitted says the objects were left out of Results because the
	// status event would have been larger than the transport allows; the
	// query took effect.
	ObjectsOmitted bool `json:"objectsOmitted,omitempty"`
}

// QueryResult is what one query found.
type QueryResult struct {
	// Query as the bridge registered it (canonical selector; namespace
	// cleared for cluster-scoped kinds).
	Query cache.Ref `json:"query"`
	// Pending: the kind is not served yet; the query waits for its CRD.
	Pending bool `json:"pending,omitempty"`
	// Objects found, from the bridge's cache, with Secret data and
	// stringData removed unless the policy allows Secrets. Never null.
	Objects []map[string]any `json:"objects"`
}

// Request is a decoded control message.
type Request struct {
	// ID, Source and Type are the CloudEvents attributes.
	ID     string
	Source string
	Type   string
	// Time is the time attribute; zero when absent.
	Time time.Time
	// ReplyTo is the replyto extension; empty when absent.
	ReplyTo string
	// Structured says the message was in structured mode; the status
	// answers in the same mode.
	Structured bool
	// Watcher of the request, canonical.
	Watcher cache.Ref
	// Apply is the subscription of a TypeApply, with a canonical watcher.
	Apply *ApplyData
	// Query is the data of a TypeQuery, with a canonical watcher and
	// queries.
	Query *QueryData
}
