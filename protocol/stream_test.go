package protocol

import (
	"encoding/json"
	"testing"
	"time"
)

func TestStreamFrames(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{string(AppendStreamWelcome(nil, "n1.1", "n1", "eu", "", "c2VjcmV0")),
			`{"type":"welcome","channel":"n1.1","node":"n1","region":"eu","secret":"c2VjcmV0"}`},
		{string(AppendStreamWelcome(nil, "n1.1", "n1", "", "u1", "s")),
			`{"type":"welcome","channel":"n1.1","node":"n1","region":"","user":"u1","secret":"s"}`},
		{string(AppendClose(nil, CloseSlowConsumer, "slow consumer")), `{"code":4008,"reason":"slow consumer"}`},
		{string(AppendClose(nil, CloseServiceRestart, ReconnectReason("server restart", 5*time.Second))),
			`{"code":1012,"reason":"server restart reconnect_within_ms=5000","reconnect_within_ms":5000}`},
		{string(AppendClose(nil, CloseTokenExpired, `a "quoted"`+"\n")), `{"code":4001,"reason":"a \"quoted\"\n"}`},
	} {
		if c.got != c.want {
			t.Errorf("got  %s\nwant %s", c.got, c.want)
		}
		if !json.Valid([]byte(c.got)) {
			t.Errorf("%s is not JSON", c.got)
		}
	}
}
