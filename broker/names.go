package broker

import "errors"

// MaxGroupLen is the longest group name, in bytes.
const MaxGroupLen = 100

// ErrInvalidGroup is returned for a group name that breaks the naming rule.
var ErrInvalidGroup = errors.New("broker: invalid group name")

// ErrInvalidChannel is returned for a string that is not a channel name.
var ErrInvalidChannel = errors.New("broker: invalid channel name")

// ValidGroup reports whether name is a valid group name: 1–100 ASCII letters,
// digits, '-', '_' and '.', with no leading or trailing '.' and no "..".
// Such a name is always a literal NATS subject suffix, never a wildcard.
func ValidGroup(name string) bool {
	if len(name) == 0 || len(name) > MaxGroupLen {
		return false
	}
	if name[0] == '.' || name[len(name)-1] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case isIDByte(c):
		case c == '.':
			if name[i-1] == '.' {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// maxIDLen bounds each of the two parts of a channel name.
const maxIDLen = 64

// ValidChannel reports whether name has the shape of a channel name:
// "<node>.<connection>", each part 1–64 ASCII letters, digits, '-' or '_'.
func ValidChannel(name string) bool {
	_, _, ok := splitChannel(name)
	return ok
}

// splitChannel returns the node and connection parts of a channel name.
func splitChannel(name string) (node, conn string, ok bool) {
	dot := -1
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '.' {
			if dot >= 0 {
				return "", "", false
			}
			dot = i
			continue
		}
		if !isIDByte(c) {
			return "", "", false
		}
	}
	if dot < 1 || dot > maxIDLen || len(name)-dot-1 < 1 || len(name)-dot-1 > maxIDLen {
		return "", "", false
	}
	return name[:dot], name[dot+1:], true
}

// validToken reports whether s is one subject token of ID bytes, as node
// ids, regions and each part of a prefix are.
func validToken(s string) bool {
	if len(s) == 0 || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isIDByte(s[i]) {
			return false
		}
	}
	return true
}

// validPrefix reports whether p can prefix subjects: dot-separated ID tokens.
func validPrefix(p string) bool {
	if p == "" {
		return false
	}
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '.' {
			if !validToken(p[start:i]) {
				return false
			}
			start = i + 1
		}
	}
	return true
}

func isIDByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}
