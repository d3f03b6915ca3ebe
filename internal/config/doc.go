// Package config holds the data types of the bridge's YAML configuration
// file, and loads, validates and reloads it. It is a leaf package: it
// imports no other package of the bridge but cache (for Ref), and nothing
// here talks to a broker or the API server.
//
// The life of a configuration:
//
//   - Load (or Parse) decodes the file strictly, expands "${ENV_VAR}"
//     references in credential fields and applies defaults (Default). Every
//     problem is a *FieldError naming the file, line, column and field path.
//   - Validate checks the meaning (names unique, references resolve, Refs
//     and selectors valid, ...) and canonicalises the Refs.
//   - Reloader polls the file and hands over each new valid version; Diff
//     says what changed, subscription by subscription.
//
// config/schema.json is the JSON Schema of the file and docs/config.md its
// reference; both are generated from these types and their comments, and a
// test fails when they are stale. Regenerate them with go generate.
package config

//go:generate go test -run ^TestGenerated$ -update .
