package event

import "k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

// Redact returns the contents of objs as Data.Objects carries them: nil
// entries skipped, and the data and stringData of core/v1 Secrets removed
// unless keepSecretData. The caller's maps are shared, never modified: a
// redacted Secret gets a shallow copy of its top-level map.
func Redact(objs []*unstructured.Unstructured, keepSecretData bool) []map[string]any {
	return objects(objs, keepSecretData)
}
