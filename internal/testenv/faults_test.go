package testenv

import "testing"

func TestIsCollection(t *testing.T) {
	tests := map[string]bool{
		"/api/v1/configmaps":                            true,
		"/api/v1/namespaces":                            true,
		"/api/v1/namespaces/demo":                       false,
		"/api/v1/namespaces/demo/configmaps":            true,
		"/api/v1/namespaces/demo/configmaps/app":        false,
		"/apis/apps/v1/deployments":                     true,
		"/apis/apps/v1/namespaces/demo/deployments":     true,
		"/apis/apps/v1/namespaces/demo/deployments/web": false,
		"/apis/example.com/v1/widgets/w1":               false,
		"/api":                                          false,
		"/apis/apps":                                    false,
		"/version":                                      false,
	}
	for path, want := range tests {
		if got := isCollection(path); got != want {
			t.Errorf("isCollection(%q) = %v, want %v", path, got, want)
		}
	}
}
