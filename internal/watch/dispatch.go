package watch

import (
	"github.com/depbridge/depbridge/internal/cache"
)

// hit is a ref an object matched before and/or after a change.
type hit struct {
	r            *refState
	inOld, inNew bool
}

// dispatchLocked turns one object change (old and/or new state) into causes
// for the watchers of every ref it concerns. relist marks changes found by
// comparing a relist with the store.
func (e *Engine) dispatchLocked(k *kindState, old, cur *cache.Object, relist bool) {
	var hits []hit
	add := func(r *refState, isNew bool) {
		for i := range hits {
			if hits[i].r == r {
				if isNew {
					hits[i].inNew = true
				} else {
					hits[i].inOld = true
				}
				return
			}
		}
		hits = append(hits, hit{r: r, inOld: !isNew, inNew: isNew})
	}
	if old != nil {
		k.index.match(old.Namespace, old.Name, old.Labels, func(r *refState) { add(r, false) })
	}
	if cur != nil {
		k.index.match(cur.Namespace, cur.Name, cur.Labels, func(r *refState) { add(r, true) })
	}
	if len(hits) == 0 {
		return
	}
	obj := cur
	if obj == nil {
		obj = old
	}
	for _, h := range hits {
		c := Cause{Watched: h.r.ref, Namespace: obj.Namespace, Name: obj.Name, UID: obj.UID,
			ResourceVersion: obj.ResourceVersion, Op: op(h, old, cur, relist)}
		if cur == nil && relist {
			c.ResourceVersion = "" // gone
		}
		for _, p := range h.r.pairs {
			if !p.waitInitial {
				e.enqueueLocked(p.w, c)
			}
		}
	}
}

// op names a change as one ref sees it.
func op(h hit, old, cur *cache.Object, relist bool) Op {
	switch {
	case relist:
		return OpRelisted
	case h.inOld && h.inNew:
		return OpModified
	case h.inNew && old == nil:
		return OpAdded
	case h.inNew:
		return OpEntered // existed, now matches the selector
	case cur == nil:
		return OpDeleted
	default:
		return OpLeft // still exists, no longer matches
	}
}
