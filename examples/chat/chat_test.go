package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/internal/wstest"
	"github.com/groupcast/groupcast/web"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestChat(t *testing.T) {
	log := apptest.Logger(t)
	b, err := broker.New(broker.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	w, err := web.New(b, web.Config{ClientSend: true, Consumer: &Chat{BadWords: []string{"darn"}}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(w.Handler())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		w.Shutdown(ctx)
		hs.Close()
		b.Close(ctx)
	}()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"
	alice, bob := wstest.Dial(t, url, nil), wstest.Dial(t, url, nil)
	alice.Join("room")
	bob.Join("room")

	alice.Call(map[string]any{"type": "send", "group": "room", "data": map[string]string{"text": "well DARN it"}})
	bob.ExpectMessage("room", `{"text":"well **** it","from":"`+alice.Channel()+`"}`)

	alice.Call(map[string]any{"type": "send", "group": "room", "data": map[string]string{"text": "/me waves"}})
	bob.ExpectMessage("room", `{"action":"`+alice.Channel()+` waves","from":"`+alice.Channel()+`"}`)

	if m := alice.Call(map[string]any{"type": "send", "group": "room", "data": 42}); m["code"] != "invalid_data" {
		t.Fatalf("a number as a chat message: %v", m)
	}
	if m := alice.Call(map[string]any{"type": "rules"}); m["type"] != "reply" {
		t.Fatalf("rules: %v", m)
	}
	alice.Conn.CloseNow()
	bob.Conn.CloseNow()
}
