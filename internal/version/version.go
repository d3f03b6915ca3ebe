// Package version says which build of the bridge is running.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at build time with
// -ldflags "-X github.com/depbridge/depbridge/internal/version.Version=v1.2.3".
var Version = "dev"

// String is the version, commit and Go version of this build.
func String() string {
	commit, dirty := "unknown", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
				if len(commit) > 12 {
					commit = commit[:12]
				}
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
	}
	return fmt.Sprintf("depbridge %s (commit %s%s, %s, %s/%s)", Version, commit, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
