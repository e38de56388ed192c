package broker

import (
	"fmt"
	"strings"
)

// Policy is how a group's messages are kept.
type Policy int

const (
	// AtMostOnce groups go over core NATS and keep nothing (the default).
	AtMostOnce Policy = iota
	// Recoverable groups keep a window of history in JetStream; members
	// can resume from the last offset they saw.
	Recoverable
	// Latest groups keep only their newest message, which every joiner
	// gets at once.
	Latest
)

// String names the policy as settings spell it.
func (p Policy) String() string {
	switch p {
	case Recoverable:
		return "recoverable"
	case Latest:
		return "latest"
	}
	return "at-most-once"
}

// ParsePolicy reads "at-most-once", "recoverable" or "latest".
func ParsePolicy(s string) (Policy, bool) {
	for _, p := range []Policy{AtMostOnce, Recoverable, Latest} {
		if p.String() == s {
			return p, true
		}
	}
	return 0, false
}

// PolicyRule gives the groups matching Pattern a policy. Patterns are
// group patterns (see ValidPattern) that a NATS subject filter expresses: a
// group name, "*" or a prefix ending in ".*".
type PolicyRule struct {
	Pattern string
	Policy  Policy
}

// CheckPolicies reports why rules cannot be kept as they read (first match
// wins), or nil: a pattern no subject filter expresses, or a recoverable
// or latest pattern overlapping an earlier one of another policy, since a
// stream cannot keep the groups of one pattern and leave those of another.
// Overlaps between patterns of one policy are fine.
func CheckPolicies(rules []PolicyRule) error {
	for i, r := range rules {
		if _, ok := policyFilter("", r.Pattern); !ok {
			return fmt.Errorf("pattern %q: want a group name, * or a prefix ending in .*", r.Pattern)
		}
		if r.Policy == AtMostOnce {
			continue
		}
		for _, e := range rules[:i] {
			if e.Policy != r.Policy && patternsOverlap(e.Pattern, r.Pattern) {
				return fmt.Errorf("%s=%s overlaps the earlier %s=%s: history streams cannot keep the groups of one and not the other; make the patterns disjoint", r.Pattern, r.Policy, e.Pattern, e.Policy)
			}
		}
	}
	return nil
}

// policyFilter maps a policy pattern onto the subject filter of its
// groups; ok is false for a pattern no filter expresses (such as "room*").
func policyFilter(groupPrefix, pattern string) (filter string, ok bool) {
	prefix, wild := strings.CutSuffix(pattern, "*")
	switch {
	case !wild:
		return groupPrefix + pattern, ValidGroup(pattern)
	case prefix == "":
		return groupPrefix + ">", true
	case strings.HasSuffix(prefix, ".") && ValidPattern(pattern):
		return groupPrefix + prefix + ">", true
	}
	return "", false
}

// addPattern adds p to the patterns of one stream unless one of them
// covers it, and drops those it covers: NATS refuses a stream whose
// subjects overlap.
func addPattern(patterns []string, p string) []string {
	for _, q := range patterns {
		if MatchPattern(q, p) {
			return patterns
		}
	}
	kept := patterns[:0]
	for _, q := range patterns {
		if !MatchPattern(p, q) {
			kept = append(kept, q)
		}
	}
	return append(kept, p)
}

// policy returns the policy of a group: the first rule that matches.
func (h *history) policy(group string) Policy {
	if h == nil {
		return AtMostOnce
	}
	for _, r := range h.rules {
		if MatchPattern(r.Pattern, group) {
			return r.Policy
		}
	}
	return AtMostOnce
}

// PolicyOf returns a group's policy.
func (b *Broker) PolicyOf(group string) Policy { return b.history.policy(group) }
