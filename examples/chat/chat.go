// Command chat is groupcast with application code of its own, written as a
// Consumer: a chat whose messages are {"text": "..."}, where bad words are
// masked and "/me waves" becomes {"action": "<user> waves"}. It runs on
// an embedded NATS server, on :8080 or $PORT:
//
//	go run ./examples/chat
//
// then open http://localhost:8080 and send messages from the page.
package main

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/groupcast/groupcast/web"
)

// Chat is the chat's consumer. It keeps the built-in checks (tokens,
// permissions) by embedding web.DefaultConsumer and calling it first.
type Chat struct {
	web.DefaultConsumer
	BadWords []string
}

// message is what clients send and receive.
type message struct {
	Text   string `json:"text,omitempty"`
	Action string `json:"action,omitempty"`
	From   string `json:"from,omitempty"`
}

// Send checks and rewrites every chat message before it is published.
func (c *Chat) Send(ctx context.Context, conn *web.Conn, r *web.SendRequest) error {
	if err := c.DefaultConsumer.Send(ctx, conn, r); err != nil {
		return err
	}
	var in message
	if err := json.Unmarshal(r.Data, &in); err != nil || strings.TrimSpace(in.Text) == "" {
		return web.Refuse("invalid_data", `send {"text": "..."}`)
	}
	who := conn.User()
	if who == "" {
		who = conn.Channel()
	}
	out := message{Text: c.mask(in.Text), From: who}
	if rest, ok := strings.CutPrefix(in.Text, "/me "); ok {
		out = message{Action: who + " " + c.mask(rest), From: who}
	}
	data, err := json.Marshal(out)
	if err != nil {
		return err
	}
	r.Data = data
	return nil
}

// Frame answers {"type":"rules"} with the list of masked words' count.
func (c *Chat) Frame(ctx context.Context, conn *web.Conn, typ string, frame json.RawMessage) (any, error) {
	if typ == "rules" {
		return map[string]any{"masked_words": len(c.BadWords), "commands": []string{"/me"}}, nil
	}
	return c.DefaultConsumer.Frame(ctx, conn, typ, frame)
}

// mask replaces each bad word, in any case, with asterisks.
func (c *Chat) mask(text string) string {
	words := strings.Fields(text)
	for i, w := range words {
		bare := strings.ToLower(strings.Trim(w, ".,!?;:"))
		for _, bad := range c.BadWords {
			if bare == bad {
				words[i] = strings.Repeat("*", len(w))
			}
		}
	}
	return strings.Join(words, " ")
}
