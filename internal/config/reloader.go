package config

import (
	"context"
	"crypto/sha256"
	"errors"
	"time"
)

// Reloader polls a configuration file and delivers every new version of it
// that loads and validates. It reads the file every Interval and compares a
// hash of its contents, so it follows a Kubernetes ConfigMap volume, whose
// files are symlinks swapped atomically, as well as an editor that rewrites
// or renames the file, and needs no file-system notifications.
//
// A version that does not load or validate (or a file that cannot be read)
// is reported to OnError once it has been seen on two polls in a row, so
// that a file caught half-written is not reported; the configuration in
// force stays. The same bad version is reported once.
type Reloader struct {
	// Path of the configuration file.
	Path string
	// Current is the configuration in force when Start is called, normally
	// the one Load returned. When nil, or when the file no longer holds
	// what Current was loaded from, Start delivers the file's configuration
	// at once.
	Current *Config
	// Interval between polls. Defaults to 1s.
	Interval time.Duration
	// OnChange receives each new valid configuration (validated, so with
	// canonical Refs), but not a version identical to the one in force
	// (after a bad edit is undone, say). It is called from Start's
	// goroutine, one call at a time; polling waits for it to return.
	// Required.
	OnChange func(*Config)
	// OnError receives each new problem: an error of Load or Validate (see
	// FieldErrors). Called like OnChange. Optional.
	OnError func(error)
}

// Start polls until ctx is done, then returns nil. It blocks, and starts no
// goroutine. It returns an error at once if Path or OnChange is missing.
func (r *Reloader) Start(ctx context.Context) error {
	if r.Path == "" || r.OnChange == nil {
		return errors.New("config reloader: Path and OnChange are required")
	}
	interval := r.Interval
	if interval <= 0 {
		interval = time.Second
	}
	var st reloadState
	if r.Current != nil && r.Current.src != nil {
		st.acted, st.haveActed = observation{sum: r.Current.src.sum}, true
		st.good, st.haveGood = r.Current.src.sum, true
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		r.poll(&st)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// observation is what one poll saw: the hash of the contents, or the error
// of reading the file.
type observation struct {
	sum     [sha256.Size]byte
	readErr string
}

type reloadState struct {
	// acted is the last observation acted on: delivered, reported, or the
	// configuration in force at the start.
	acted     observation
	haveActed bool
	// pending is a bad observation seen on one poll, waiting for the next.
	pending     observation
	havePending bool
	// good is the hash of the configuration in force.
	good     [sha256.Size]byte
	haveGood bool
}

// poll reads the file once and acts on what it finds.
func (r *Reloader) poll(st *reloadState) {
	data, err := readFile(r.Path)
	var obs observation
	if err != nil {
		obs.readErr = err.Error()
	} else {
		obs.sum = sha256.Sum256(data)
	}
	if st.haveActed && obs == st.acted {
		st.havePending = false
		return
	}
	var cfg *Config
	if err == nil {
		cfg, err = Parse(r.Path, data)
		if err == nil {
			err = cfg.Validate()
		}
	}
	switch {
	case err == nil:
		st.acted, st.haveActed, st.havePending = obs, true, false
		if st.haveGood && obs.sum == st.good {
			return // back to the configuration in force
		}
		st.good, st.haveGood = obs.sum, true
		r.OnChange(cfg)
	case st.havePending && obs == st.pending:
		st.acted, st.haveActed, st.havePending = obs, true, false
		if r.OnError != nil {
			r.OnError(err)
		}
	default:
		st.pending, st.havePending = obs, true
	}
}
