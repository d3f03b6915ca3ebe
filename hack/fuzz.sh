#!/usr/bin/env bash
# Run every fuzz target of the module for FUZZTIME each (make fuzz).
#
#   usage: hack/fuzz.sh [FUZZTIME]    (default 30s; a count such as 100000x works too)
#   env:   GO (default go)
#
# A target fails the run when go test fails, with one exception: Go 1.26's
# fuzz coordinator can report its own -fuzztime deadline as a failure,
# "context deadline exceeded" with no failing input written
# (https://go.dev/issue/75804, fixed in Go 1.27). That run is reported as
# such and counted as passed. A real failure writes its input to
# testdata/fuzz/<target>/, and any other error message fails the run.
set -uo pipefail

FUZZTIME=${1:-30s}
GO=${GO:-go}
cd "$(dirname "$0")/.."

failed=0
for dir in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
	for target in $(grep -h '^func Fuzz' "$dir"/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do
		echo "== $dir $target"
		corpus="$dir/testdata/fuzz/$target"
		before=$(ls "$corpus" 2>/dev/null | sort)
		log=$(mktemp)
		"$GO" test -run '^$' -fuzz "^$target\$" -fuzztime "$FUZZTIME" "$dir" 2>&1 | tee "$log"
		rc=${PIPESTATUS[0]}
		after=$(ls "$corpus" 2>/dev/null | sort)
		if [ "$rc" -ne 0 ]; then
			# The coordinator's deadline: the target's only failure message, and
			# no new input in the corpus.
			msgs=$(sed -n "/^--- FAIL: $target /,/^FAIL\$/p" "$log" | sed '1d;$d' | sed 's/^[[:space:]]*//' | grep -v '^$')
			if [ "$before" = "$after" ] && [ "$msgs" = "context deadline exceeded" ]; then
				echo "fuzz.sh: $target: Go's fuzz coordinator reported its own deadline (go.dev/issue/75804) and wrote no failing input; counted as passed"
			else
				echo "fuzz.sh: $target failed (exit $rc)${after:+; failing inputs are in $corpus}"
				failed=1
			fi
		fi
		rm -f "$log"
	done
done
exit "$failed"
