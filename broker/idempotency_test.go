package broker

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestIdempotencyKeysScoped: a client allowed only into room.attacker
// sends with the key a backend is about to use for room.vip; the
// backend's publish is still delivered, and so is a backend's publish
// with a client's key in the same group. A retry from the same source to
// the same group is the duplicate.
func TestIdempotencyKeysScoped(t *testing.T) {
	b := historyBroker(t, "", 100, PolicyRule{"room.*", Recoverable})
	vip, r := open(t, b)
	join(t, b, "room.vip", vip)

	if _, err := b.GroupPublishWith("room.attacker", []byte(`"x"`), PublishOptions{Source: FromClient, Key: "invoice-1001"}); err != nil {
		t.Fatal(err)
	}
	first, err := b.GroupPublish("room.vip", []byte(`"paid"`), "invoice-1001")
	if err != nil || first.Duplicate {
		t.Fatalf("backend publish after a client's same key elsewhere: %+v, %v", first, err)
	}
	if got := r.next(t); !strings.Contains(got, `"data":"paid"`) {
		t.Fatalf("delivered %s", got)
	}
	if rc, err := b.GroupPublishWith("room.vip", []byte(`"spoof"`), PublishOptions{Source: FromClient, Key: "invoice-1001"}); err != nil || rc.Duplicate {
		t.Fatalf("client publish with the backend's key: %+v, %v", rc, err)
	}
	if got := r.next(t); !strings.Contains(got, `"data":"spoof"`) {
		t.Fatalf("delivered %s", got)
	}
	again, err := b.GroupPublish("room.vip", []byte(`"paid"`), "invoice-1001")
	if err != nil || !again.Duplicate || again.Offset != first.Offset {
		t.Fatalf("backend retry: %+v, %v; want the duplicate of %+v", again, err, first)
	}
	r.none(t, 50*time.Millisecond)
	if _, err := b.GroupPublish("room.vip", []byte(`1`), "k\r\nNats-Expected-Last-Sequence: 1"); !errors.Is(err, ErrInvalidData) {
		t.Fatalf("a key with CR LF: %v, want invalid data", err)
	}
}
