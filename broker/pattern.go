package broker

import "strings"

// Group patterns select groups by name, with one syntax wherever groups are
// chosen: token permissions, presence groups and group policies.
//
//	room.lobby  that one group
//	*           every group
//	room.*      every group whose name starts with "room." (not "room")
//	room*       every group whose name starts with "room" ("room", "rooms.a")
//
// A pattern is a group name, or the start of one followed by '*'; a '*'
// anywhere else is refused. Group policies take the patterns a NATS subject
// filter expresses: names, "*" and prefixes ending in ".*".

// ValidPattern reports whether p is a group pattern.
func ValidPattern(p string) bool {
	prefix, wild := strings.CutSuffix(p, "*")
	if !wild {
		return ValidGroup(p)
	}
	// "*", or the start of some valid name.
	return prefix == "" || ValidGroup(prefix) || ValidGroup(prefix+"x")
}

// MatchPattern reports whether group matches the pattern p.
func MatchPattern(p, group string) bool {
	if prefix, wild := strings.CutSuffix(p, "*"); wild {
		return strings.HasPrefix(group, prefix)
	}
	return p == group
}

// MatchAny reports whether group matches one of patterns.
func MatchAny(patterns []string, group string) bool {
	for _, p := range patterns {
		if MatchPattern(p, group) {
			return true
		}
	}
	return false
}

// patternsOverlap reports whether some group matches both valid patterns:
// the sets of two patterns are nested or disjoint, so one covers the other.
func patternsOverlap(a, b string) bool { return MatchPattern(a, b) || MatchPattern(b, a) }
