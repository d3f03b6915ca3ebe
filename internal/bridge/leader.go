package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/depbridge/depbridge/internal/metrics"
)

// LeaderElection makes one replica active at a time through a
// coordination.k8s.io Lease (client-go's leaderelection).
type LeaderElection struct {
	// Name and Namespace of the Lease. Required.
	Name, Namespace string
	// Identity of this replica. Defaults to the bridge's Instance.
	Identity string
	// LeaseDuration is how long a standby waits, after the leader stopped
	// renewing, before it takes over. Defaults to 15s.
	LeaseDuration time.Duration
	// RenewDeadline is how long the leader retries renewing before it
	// gives up the lead. Defaults to 10s.
	RenewDeadline time.Duration
	// RetryPeriod is the time between attempts. Defaults to 2s.
	RetryPeriod time.Duration
}

// ErrLostLease is returned by Start when this replica stops leading.
var ErrLostLease = errors.New("lost the leader election lease")

// lead runs the bridge while this replica holds the lease. It returns nil
// when ctx is done, ErrLostLease when the lease is lost (after the bridge
// stopped), or the bridge's error.
func (b *Bridge) lead(ctx context.Context) error {
	le := *b.opts.LeaderElection
	if le.Identity == "" {
		le.Identity = b.opts.Instance
	}
	if le.LeaseDuration <= 0 {
		le.LeaseDuration = 15 * time.Second
	}
	if le.RenewDeadline <= 0 {
		le.RenewDeadline = 10 * time.Second
	}
	if le.RetryPeriod <= 0 {
		le.RetryPeriod = 2 * time.Second
	}
	cs, err := kubernetes.NewForConfig(b.opts.REST)
	if err != nil {
		return err
	}
	leader, err := metrics.NewLeader(b.opts.Registry)
	if err != nil {
		return fmt.Errorf("register leader metric: %w", err)
	}
	// The elector runs on a context of its own, cancelled only once the
	// bridge has stopped: with ReleaseOnCancel it gives the lease up as
	// soon as its context ends, and a standby must not take over while
	// this replica's reconciles, checkpoint and sinks are still finishing
	// (client-go's contract for ReleaseOnCancel).
	ectx, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElecting()
	ran := make(chan error, 1)
	var led atomic.Bool
	// Before this replica leads, the end of ctx stops the election; once
	// it leads, the end of the bridge does (OnStartedLeading). led is set
	// before the bridge starts, so one of the two always stops it.
	stopWaiting := context.AfterFunc(ctx, func() {
		if !led.Load() {
			stopElecting()
		}
	})
	defer stopWaiting()
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Name: "depbridge",
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Name: le.Name, Namespace: le.Namespace},
			Client:     cs.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: le.Identity},
		},
		LeaseDuration:   le.LeaseDuration,
		RenewDeadline:   le.RenewDeadline,
		RetryPeriod:     le.RetryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			// lctx ends when the lease is lost (or the election stops).
			OnStartedLeading: func(lctx context.Context) {
				led.Store(true)
				rctx, stop := context.WithCancel(lctx)
				defer stop()
				defer context.AfterFunc(ctx, stop)()
				b.log.Info("leading: starting the bridge", "lease", le.Namespace+"/"+le.Name, "identity", le.Identity)
				b.setLeading(true)
				leader.Set(1)
				ran <- b.run(rctx)
				// Everything the lease guards has stopped: release it.
				stopElecting()
			},
			OnStoppedLeading: func() {
				b.setLeading(false)
				leader.Set(0)
			},
			OnNewLeader: func(id string) {
				if id != le.Identity {
					b.log.Info("standby: another replica leads", "leader", id, "lease", le.Namespace+"/"+le.Name)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	b.log.Info("standby: waiting for the lease", "lease", le.Namespace+"/"+le.Name, "identity", le.Identity)
	// Run returns when the lease is lost or, after the bridge stopped, once
	// it released the lease; or, if this replica never led, when ctx is
	// done.
	elector.Run(ectx)
	if !led.Load() {
		return nil
	}
	// After a lost lease Run does not wait for the bridge to stop: wait
	// here, so that the sinks are flushed before the process exits.
	runErr := <-ran
	if ctx.Err() != nil {
		return runErr
	}
	if runErr != nil {
		return runErr
	}
	return ErrLostLease
}

func (b *Bridge) setLeading(v bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leading = v
}
