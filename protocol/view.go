package protocol

import (
	"errors"
	"unicode/utf16"
	"unicode/utf8"
)

// A View is a server object decoded in place, for loops that decode frame
// after frame and must not allocate (a load generator, a relay): the same
// fields as Frame, as bytes. One View is reused for every object.
//
// After v.Decode(obj), the raw fields (ID, Data, Member, Raw) and plain
// strings are sub-slices of obj; a string with escapes or invalid UTF-8
// is unescaped into the View's own buffer. They stay valid until obj's
// memory is reused or v decodes again, whichever comes first: copy what
// must outlive that (Frame does). A View is not safe for concurrent use.
type View struct {
	Type    []byte
	ID      []byte // raw JSON, as in Frame
	Code    []byte
	Message []byte
	Group   []byte
	Channel []byte
	Node    []byte
	Region  []byte
	User    []byte
	Data    []byte // raw JSON
	Offset  uint64
	Epoch   []byte
	Event   []byte
	Member  []byte // raw JSON
	// HasRecovered says the object had "recovered" (Frame.Recovered is
	// not nil), and Recovered is its value.
	HasRecovered bool
	Recovered    bool
	Duplicate    bool
	Raw          []byte

	buf []byte // unescaped strings
}

// Decode decodes one server object into v, accepting and refusing exactly
// what the package's Decode does, with the same result (see Frame), and
// without allocating once v's buffer has grown to the longest escaped
// strings seen. On error v is left empty.
func (v *View) Decode(obj []byte) error {
	*v = View{buf: v.buf[:0]}
	d := viewDecoder{p: obj, v: v}
	i := d.space(0)
	if i == len(obj) || obj[i] != '{' {
		return errors.New("protocol: undecodable frame: not a JSON object")
	}
	i, err := d.object(i, 1, true)
	if err == nil && d.space(i) != len(obj) {
		err = errSyntax
	}
	if err != nil {
		*v = View{buf: v.buf[:0]}
		return err
	}
	v.Raw = obj
	return nil
}

// Frame returns v as a Frame, copied: it stays valid when v's bytes do not.
func (v *View) Frame() Frame {
	f := Frame{
		Type: string(v.Type), Code: string(v.Code), Message: string(v.Message), Group: string(v.Group),
		Channel: string(v.Channel), Node: string(v.Node), Region: string(v.Region), User: string(v.User),
		Offset: v.Offset, Epoch: string(v.Epoch), Event: string(v.Event), Duplicate: v.Duplicate,
		ID: clone(v.ID), Data: clone(v.Data), Member: clone(v.Member), Raw: clone(v.Raw),
	}
	if v.HasRecovered {
		r := v.Recovered
		f.Recovered = &r
	}
	return f
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

var (
	errSyntax = errors.New("protocol: undecodable frame: invalid JSON")
	errType   = errors.New("protocol: undecodable frame: a field has the wrong JSON type")
)

// maxDepth is encoding/json's nesting limit, which Decode inherits.
const maxDepth = 10000

// The kinds of Frame fields, by the JSON values encoding/json stores in them.
const (
	kindString   = iota // string; null keeps the earlier value
	kindRaw             // any value, raw (json.RawMessage); null is "null"
	kindUint            // uint64: an integer; null keeps the earlier value
	kindBool            // bool; null keeps the earlier value
	kindOptional        // *bool; null sets it back to nil
)

// Frame's fields, by their index in viewFields.
const (
	fType = iota
	fID
	fCode
	fMessage
	fGroup
	fChannel
	fNode
	fRegion
	fUser
	fData
	fOffset
	fEpoch
	fEvent
	fMember
	fRecovered
	fDuplicate
)

// viewFields are Frame's JSON names, matched as encoding/json matches them.
var viewFields = [...]struct {
	name string
	kind int
}{
	fType: {"type", kindString}, fID: {"id", kindRaw}, fCode: {"code", kindString},
	fMessage: {"message", kindString}, fGroup: {"group", kindString}, fChannel: {"channel", kindString},
	fNode: {"node", kindString}, fRegion: {"region", kindString}, fUser: {"user", kindString},
	fData: {"data", kindRaw}, fOffset: {"offset", kindUint}, fEpoch: {"epoch", kindString},
	fEvent: {"event", kindString}, fMember: {"member", kindRaw}, fRecovered: {"recovered", kindOptional},
	fDuplicate: {"duplicate", kindBool},
}

// field returns where the value of field f, a string or raw one, goes in v.
func (v *View) field(f int) *[]byte {
	switch f {
	case fType:
		return &v.Type
	case fID:
		return &v.ID
	case fCode:
		return &v.Code
	case fMessage:
		return &v.Message
	case fGroup:
		return &v.Group
	case fChannel:
		return &v.Channel
	case fNode:
		return &v.Node
	case fRegion:
		return &v.Region
	case fUser:
		return &v.User
	case fData:
		return &v.Data
	case fEpoch:
		return &v.Epoch
	case fEvent:
		return &v.Event
	case fMember:
		return &v.Member
	}
	panic("protocol: no byte field " + viewFields[f].name)
}

// viewDecoder scans one object with encoding/json's grammar and limits;
// every method takes the index where its token starts and returns the
// index after it.
type viewDecoder struct {
	p []byte
	v *View
}

func (d *viewDecoder) space(i int) int {
	for i < len(d.p) && (d.p[i] == ' ' || d.p[i] == '\t' || d.p[i] == '\n' || d.p[i] == '\r') {
		i++
	}
	return i
}

// object scans the object at d.p[i] ('{'); top says it is the frame
// itself, whose known fields are stored.
func (d *viewDecoder) object(i, depth int, top bool) (int, error) {
	i, more, err := d.open(i, depth, '}')
	for more && err == nil {
		if i == len(d.p) || d.p[i] != '"' {
			return 0, errSyntax
		}
		ks := i
		var plain bool
		if i, plain, err = d.str(i); err != nil {
			return 0, err
		}
		key := d.p[ks+1 : i-1]
		i = d.space(i)
		if i == len(d.p) || d.p[i] != ':' {
			return 0, errSyntax
		}
		i = d.space(i + 1)
		f := -1
		if top {
			f = d.lookup(key, plain)
		}
		if f < 0 {
			i, err = d.value(i, depth)
		} else {
			i, err = d.store(i, depth, f)
		}
		if err == nil {
			i, more, err = d.next(i, '}')
		}
	}
	return i, err
}

func (d *viewDecoder) array(i, depth int) (int, error) {
	i, more, err := d.open(i, depth, ']')
	for more && err == nil {
		if i, err = d.value(i, depth); err == nil {
			i, more, err = d.next(i, ']')
		}
	}
	return i, err
}

// open scans the start of an object or an array at d.p[i], which end
// closes: more says a member follows at the index returned, else it was
// empty and the index is after it.
func (d *viewDecoder) open(i, depth int, end byte) (int, bool, error) {
	if depth > maxDepth {
		return 0, false, errSyntax
	}
	i = d.space(i + 1)
	if i < len(d.p) && d.p[i] == end {
		return i + 1, false, nil
	}
	return i, true, nil
}

// next scans what follows a member of an object or an array that end
// closes: a ',' (more members follow), or end.
func (d *viewDecoder) next(i int, end byte) (int, bool, error) {
	i = d.space(i)
	switch {
	case i == len(d.p):
	case d.p[i] == ',':
		return d.space(i + 1), true, nil
	case d.p[i] == end:
		return i + 1, false, nil
	}
	return 0, false, errSyntax
}

// lookup returns the index in viewFields of key, the inside of a JSON
// string (its bytes when plain), or -1. Like encoding/json it matches
// case-insensitively, with Unicode's simple folding, where 'ſ' is an 's'
// (no name has a 'k', whose Kelvin sign folds too).
func (d *viewDecoder) lookup(key []byte, plain bool) int {
	if !plain {
		mark := len(d.v.buf)
		d.v.buf = unquote(d.v.buf, key)
		key = d.v.buf[mark:]
		d.v.buf = d.v.buf[:mark]
	}
	for i, f := range viewFields {
		if string(key) == f.name {
			return i
		}
	}
	for i, f := range viewFields {
		if foldEqual(key, f.name) {
			return i
		}
	}
	return -1
}

// foldEqual compares key with name, a lower-case ASCII name.
func foldEqual(key []byte, name string) bool {
	j := 0
	for i := 0; i < len(key); {
		if j == len(name) {
			return false
		}
		c := key[i]
		if c < utf8.RuneSelf {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != name[j] {
				return false
			}
			i, j = i+1, j+1
			continue
		}
		r, n := utf8.DecodeRune(key[i:])
		if r != 'ſ' || name[j] != 's' {
			return false
		}
		i, j = i+n, j+1
	}
	return j == len(name)
}

// store scans the value at d.p[i] into field f, or fails as json.Unmarshal
// does on a value of the wrong type.
func (d *viewDecoder) store(i, depth, f int) (int, error) {
	v := d.v
	if i == len(d.p) {
		return 0, errSyntax
	}
	c := d.p[i]
	kind := viewFields[f].kind
	if c == 'n' && kind != kindRaw {
		end, err := d.value(i, depth)
		if kind == kindOptional {
			v.HasRecovered, v.Recovered = false, false
		}
		return end, err
	}
	switch kind {
	case kindRaw:
		end, err := d.value(i, depth)
		if err != nil {
			return 0, err
		}
		*v.field(f) = d.p[i:end:end]
		return end, nil
	case kindString:
		if c != '"' {
			break
		}
		end, plain, err := d.str(i)
		if err != nil {
			return 0, err
		}
		if plain {
			*v.field(f) = d.p[i+1 : end-1 : end-1]
		} else {
			mark := len(v.buf)
			v.buf = unquote(v.buf, d.p[i+1:end-1])
			*v.field(f) = v.buf[mark:len(v.buf):len(v.buf)]
		}
		return end, nil
	case kindUint:
		if c != '-' && (c < '0' || c > '9') {
			break
		}
		end, err := d.number(i)
		if err != nil {
			return 0, err
		}
		n, ok := parseUint(d.p[i:end])
		if !ok {
			return 0, errType
		}
		v.Offset = n
		return end, nil
	case kindBool, kindOptional:
		if c != 't' && c != 'f' {
			break
		}
		end, err := d.value(i, depth)
		if err != nil {
			return 0, err
		}
		if kind == kindBool {
			v.Duplicate = c == 't'
		} else {
			v.HasRecovered, v.Recovered = true, c == 't'
		}
		return end, nil
	}
	if _, err := d.value(i, depth); err != nil {
		return 0, err
	}
	return 0, errType
}

// parseUint parses what strconv.ParseUint(s, 10, 64) accepts of a JSON
// number: digits only, in range.
func parseUint(s []byte) (uint64, bool) {
	var n uint64
	for _, c := range s {
		if c < '0' || c > '9' || n > (1<<64-1)/10 || n*10 > 1<<64-1-uint64(c-'0') {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// value scans any JSON value at d.p[i].
func (d *viewDecoder) value(i, depth int) (int, error) {
	if i == len(d.p) {
		return 0, errSyntax
	}
	switch c := d.p[i]; {
	case c == '{':
		return d.object(i, depth+1, false)
	case c == '[':
		return d.array(i, depth+1)
	case c == '"':
		end, _, err := d.str(i)
		return end, err
	case c == '-' || '0' <= c && c <= '9':
		return d.number(i)
	case c == 't':
		return d.literal(i, "true")
	case c == 'f':
		return d.literal(i, "false")
	case c == 'n':
		return d.literal(i, "null")
	}
	return 0, errSyntax
}

func (d *viewDecoder) literal(i int, lit string) (int, error) {
	if len(d.p)-i < len(lit) || string(d.p[i:i+len(lit)]) != lit {
		return 0, errSyntax
	}
	return i + len(lit), nil
}

// number scans -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?.
func (d *viewDecoder) number(i int) (int, error) {
	p := d.p
	if i < len(p) && p[i] == '-' {
		i++
	}
	switch {
	case i < len(p) && p[i] == '0':
		i++
	case i < len(p) && '1' <= p[i] && p[i] <= '9':
		i = digits(p, i)
	default:
		return 0, errSyntax
	}
	if i < len(p) && p[i] == '.' {
		if i+1 == len(p) || p[i+1] < '0' || p[i+1] > '9' {
			return 0, errSyntax
		}
		i = digits(p, i+1)
	}
	if i < len(p) && (p[i] == 'e' || p[i] == 'E') {
		i++
		if i < len(p) && (p[i] == '+' || p[i] == '-') {
			i++
		}
		if i == len(p) || p[i] < '0' || p[i] > '9' {
			return 0, errSyntax
		}
		i = digits(p, i)
	}
	return i, nil
}

func digits(p []byte, i int) int {
	for i < len(p) && '0' <= p[i] && p[i] <= '9' {
		i++
	}
	return i
}

// str scans the string at d.p[i] ('"'); plain says its bytes are its
// value: no escapes, valid UTF-8.
func (d *viewDecoder) str(i int) (end int, plain bool, err error) {
	p := d.p
	plain = true
	for i++; i < len(p); {
		c := p[i]
		if ' ' <= c && c < utf8.RuneSelf && c != '"' && c != '\\' {
			i++ // the common byte first
			continue
		}
		switch {
		case c == '"':
			return i + 1, plain, nil
		case c < ' ':
			return 0, false, errSyntax
		case c == '\\':
			plain = false
			if i+1 == len(p) {
				return 0, false, errSyntax
			}
			switch p[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(p)-i < 6 || hex4(p[i+2:i+6]) < 0 {
					return 0, false, errSyntax
				}
				i += 6
			default:
				return 0, false, errSyntax
			}
		case c < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRune(p[i:])
			if r == utf8.RuneError && n == 1 {
				plain = false
			}
			i += n
		}
	}
	return 0, false, errSyntax
}

func hex4(s []byte) rune {
	var r rune
	for _, c := range s {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// unquote appends the value of s, the inside of a valid JSON string, to
// buf as encoding/json decodes it: escapes resolved, invalid UTF-8 and
// lone surrogates replaced by U+FFFD.
func unquote(buf, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			switch s[i+1] {
			case 'b':
				buf, i = append(buf, '\b'), i+2
			case 'f':
				buf, i = append(buf, '\f'), i+2
			case 'n':
				buf, i = append(buf, '\n'), i+2
			case 'r':
				buf, i = append(buf, '\r'), i+2
			case 't':
				buf, i = append(buf, '\t'), i+2
			case 'u':
				r := hex4(s[i+2 : i+6])
				i += 6
				if utf16.IsSurrogate(r) {
					r2 := rune(-1)
					if len(s)-i >= 6 && s[i] == '\\' && s[i+1] == 'u' {
						r2 = hex4(s[i+2 : i+6])
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						buf, i = utf8.AppendRune(buf, dec), i+6
						continue
					}
					r = utf8.RuneError
				}
				buf = utf8.AppendRune(buf, r)
			default: // '"', '\\', '/'
				buf, i = append(buf, s[i+1]), i+2
			}
		case c < utf8.RuneSelf:
			buf, i = append(buf, c), i+1
		default:
			r, n := utf8.DecodeRune(s[i:])
			buf, i = utf8.AppendRune(buf, r), i+n
		}
	}
	return buf
}
