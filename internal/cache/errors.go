package cache

import "errors"

var (
	// ErrInvalidInput wraps every validation failure of a Ref or a query.
	ErrInvalidInput = errors.New("invalid input")
	// ErrNoVersionedResource means discovery definitively has no resource
	// for a group, version and kind: the group/version is not served, or it
	// has no such kind. Transient discovery failures are never reported as
	// this error.
	ErrNoVersionedResource = errors.New("no resource for this group, version and kind")
	// ErrResourceUnwatchable means the kind exists but its resource does not
	// support list and watch (for example SubjectAccessReview).
	ErrResourceUnwatchable = errors.New("resource does not support list and watch")
	// ErrNoCacheEntry means nothing watches the namespace and kind asked
	// for, so the cache cannot say whether the object exists. A watched
	// object that does not exist is not an error: Get returns (nil, nil).
	ErrNoCacheEntry = errors.New("not in the cache: nothing watches it")
)
