// Command benchtable reads `go test -bench` output on stdin, passes it
// through, and then prints each benchmark's metrics as a markdown table:
// one row per benchmark, one column per unit, in the order first seen.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

type row struct {
	pkg, name string
	vals      map[string]string
}

func main() {
	var (
		rows  []row
		units []string
		seen  = map[string]bool{}
		pkg   string
		fails bool
	)
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Println(line)
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = p
		}
		if strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "--- FAIL") {
			fails = true
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		r := row{pkg: pkg, name: strings.TrimPrefix(f[0], "Benchmark"), vals: map[string]string{}}
		for i := 2; i+1 < len(f); i += 2 {
			unit := f[i+1]
			r.vals[unit] = f[i]
			if !seen[unit] {
				seen[unit] = true
				units = append(units, unit)
			}
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		fmt.Println("\nbenchtable: no benchmark results")
		os.Exit(1)
	}
	byPkg := map[string][]row{}
	var pkgs []string
	for _, r := range rows {
		if byPkg[r.pkg] == nil {
			pkgs = append(pkgs, r.pkg)
		}
		byPkg[r.pkg] = append(byPkg[r.pkg], r)
	}
	for _, p := range pkgs {
		var cols []string
		for _, u := range units {
			for _, r := range byPkg[p] {
				if _, ok := r.vals[u]; ok {
					cols = append(cols, u)
					break
				}
			}
		}
		fmt.Printf("\n### %s\n\n| benchmark | %s |\n|---|%s\n", p, strings.Join(cols, " | "), strings.Repeat("---:|", len(cols)))
		for _, r := range byPkg[p] {
			cells := make([]string, len(cols))
			for i, c := range cols {
				cells[i] = r.vals[c]
			}
			fmt.Printf("| %s | %s |\n", r.name, strings.Join(cells, " | "))
		}
	}
	if fails {
		os.Exit(1)
	}
}
