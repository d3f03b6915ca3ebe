package config

import (
	"cmp"
	"errors"
	"slices"
	"strconv"
	"strings"
)

// FieldError is one problem found in a configuration file: where it is and
// what is wrong. Parse, Load and Validate return every problem they find as a
// *FieldError joined with errors.Join; FieldErrors takes them apart again.
//
// Msg never contains the value of a credential field.
type FieldError struct {
	// File is the name given to Parse or the path given to Load; empty for a
	// Config that was not loaded from a file.
	File string
	// Line and Column are 1-based; 0 when unknown (a problem with the file
	// as a whole, or a Config built in code).
	Line   int
	Column int
	// Path is the field path of the problem, "subscriptions[0].watched[1].selector",
	// with map keys quoted ("sinks[0].http.headers[\"Authorization\"]"); empty
	// for a problem with the whole file.
	Path string
	// Msg says what is wrong, in lower case.
	Msg string
}

// Error renders e as "file:line:col: path: msg", leaving out what is unknown.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteString(":" + strconv.Itoa(e.Line))
			if e.Column > 0 {
				b.WriteString(":" + strconv.Itoa(e.Column))
			}
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		b.WriteString("line " + strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteString(":" + strconv.Itoa(e.Column))
		}
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// FieldErrors lists the problems in err, an error returned by Load, Parse or
// Validate, in the order they were found. An error that is not a
// *FieldError (a file that cannot be read) becomes one with only Msg set, so
// that a caller such as "bridge validate" can print every problem the same
// way. FieldErrors(nil) is nil.
func FieldErrors(err error) []*FieldError {
	if err == nil {
		return nil
	}
	if multi, ok := err.(interface{ Unwrap() []error }); ok {
		var out []*FieldError
		for _, e := range multi.Unwrap() {
			out = append(out, FieldErrors(e)...)
		}
		return out
	}
	if fe, ok := err.(*FieldError); ok {
		return []*FieldError{fe}
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return []*FieldError{fe}
	}
	return []*FieldError{{Msg: err.Error()}}
}

// joinFieldErrors returns nil for no errors, else errors.Join of errs sorted
// by position (stable, so that problems found at one place keep their order).
func joinFieldErrors(errs []*FieldError) error {
	if len(errs) == 0 {
		return nil
	}
	slices.SortStableFunc(errs, func(a, b *FieldError) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	all := make([]error, len(errs))
	for i, e := range errs {
		all[i] = e
	}
	return errors.Join(all...)
}
