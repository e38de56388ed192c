package main

import (
	"slices"
	"testing"
)

// TestHookSettings: HOOK_HEADERS forwards Cookie unless told otherwise.
func TestHookSettings(t *testing.T) {
	for value, want := range map[string][]string{
		"":                      {"Cookie"},
		"none":                  nil,
		"Cookie, X-Request-Id ": {"Cookie", "X-Request-Id"},
	} {
		s, err := loadSettings(func(k string) string {
			if k == "HOOK_HEADERS" {
				return value
			}
			return ""
		})
		if err != nil {
			t.Fatalf("HOOK_HEADERS=%q: %v", value, err)
		}
		if !slices.Equal(s.Web.Hooks.Headers, want) {
			t.Errorf("HOOK_HEADERS=%q: %q, want %q", value, s.Web.Hooks.Headers, want)
		}
	}
}
