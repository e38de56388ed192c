package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/groupcast/groupcast/broker"
)

// publishGroup is POST /api/groups/{group}/messages: the body, one JSON
// value, goes to every member of the group (Channels' group_send).
//
// An Idempotency-Key header makes a retried publish deliver once (in a
// recoverable or latest group); the answer then says "duplicate". In such
// groups the answer carries the message's offset and epoch. A
// Groupcast-Exclude header names a channel not to deliver to.
func (s *Server) publishGroup(c echo.Context) error {
	group := c.Param("group")
	if !broker.ValidGroup(group) {
		return broker.ErrInvalidGroup
	}
	key := c.Request().Header.Get("Idempotency-Key")
	if len(key) > maxIdempotencyKey {
		return refuse(CodeInvalidData, "Idempotency-Key is too long")
	}
	except := c.Request().Header.Get(excludeHeader)
	if except != "" && !broker.ValidChannel(except) {
		return refuse(CodeInvalidChan, excludeHeader+" is not a channel name")
	}
	var receipt broker.Receipt
	err := s.publish(c, "api", func(body []byte) (err error) {
		receipt, err = s.broker.GroupPublishWith(group, body, broker.PublishOptions{Key: key, Except: except})
		return err
	})
	if err != nil {
		return err
	}
	if receipt.Offset == 0 {
		return accepted(c)
	}
	return c.JSON(http.StatusAccepted, map[string]any{"ok": true, "offset": receipt.Offset, "epoch": receipt.Epoch, "duplicate": receipt.Duplicate})
}

// excludeHeader names, on a group publish, a channel not to deliver to.
const excludeHeader = "Groupcast-Exclude"

// history is GET /api/groups/{group}/history?since=<offset>&limit=<n>:
// the kept messages after since, oldest first, at most limit (default
// 100, at most 1000).
func (s *Server) history(c echo.Context) error {
	group := c.Param("group")
	if !broker.ValidGroup(group) {
		return broker.ErrInvalidGroup
	}
	since, err := queryUint(c, "since", 0, math.MaxInt64)
	if err != nil {
		return err
	}
	limit, err := queryUint(c, "limit", 100, 1000)
	if err != nil {
		return err
	}
	msgs, epoch, err := s.broker.History(c.Request().Context(), group, since, int(limit))
	if err != nil {
		return err
	}
	type message struct {
		Offset uint64          `json:"offset"`
		Region string          `json:"region,omitempty"`
		Data   json.RawMessage `json:"data"`
	}
	out := make([]message, len(msgs))
	for i, m := range msgs {
		out[i] = message{m.Offset, m.Region, m.Data}
	}
	return c.JSON(http.StatusOK, map[string]any{"epoch": epoch, "messages": out})
}

// queryUint reads a whole-number query parameter, def when absent.
func queryUint(c echo.Context, name string, def, max uint64) (uint64, error) {
	v := c.QueryParam(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > max {
		return 0, refuse(CodeInvalidData, fmt.Sprintf("%s must be a whole number from 0 to %d", name, max))
	}
	return n, nil
}

// publishChannel is POST /api/channels/{channel}/messages: the body goes to
// one connection, wherever it is (Channels' send).
func (s *Server) publishChannel(c echo.Context) error {
	channel := c.Param("channel")
	if !broker.ValidChannel(channel) {
		return broker.ErrInvalidChannel
	}
	if err := s.publish(c, "api", func(body []byte) error { return s.broker.Send(channel, body) }); err != nil {
		return err
	}
	return accepted(c)
}

// readBody reads a request body of at most MaxBodyBytes.
func (s *Server) readBody(c echo.Context) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), c.Request().Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, broker.ErrTooLarge
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, refuse(CodeInvalidJSON, "the body did not arrive within the read timeout")
		}
		return nil, refuse(CodeInvalidJSON, "could not read the body")
	}
	return body, nil
}

func (s *Server) publish(c echo.Context, source string, send func([]byte) error) error {
	body, err := s.readBody(c)
	if err != nil {
		return err
	}
	if !json.Valid(body) {
		return refuse(CodeInvalidJSON, "the body must be one JSON value")
	}
	if err := send(body); err != nil {
		return err
	}
	s.metrics.published.WithLabelValues(source).Inc()
	return nil
}

// maxBatchMessages bounds the messages of one batch publish.
const maxBatchMessages = 1000

// batchMessage is one message of a batch publish: to a group or to a
// channel, exactly one of the two.
type batchMessage struct {
	Group          string          `json:"group"`
	Channel        string          `json:"channel"`
	Data           json.RawMessage `json:"data"`
	IdempotencyKey string          `json:"idempotency_key"`
	Exclude        string          `json:"exclude"` // group messages: a channel not to deliver to
}

// batchResult is the answer for one message of a batch.
type batchResult struct {
	OK        bool      `json:"ok,omitempty"`
	Offset    uint64    `json:"offset,omitempty"`
	Epoch     string    `json:"epoch,omitempty"`
	Duplicate bool      `json:"duplicate,omitempty"`
	Error     *apiError `json:"error,omitempty"`
}

func (e *apiError) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"code": e.code, "message": e.message})
}

// publishBatch is POST /api/messages: {"messages":[{"group":G,"data":D},
// {"channel":C,"data":D}, ...]}, each published as by its own request, in
// order, for backends that publish many messages at once: one request
// instead of one each. The answer, 200 whenever the body is well formed,
// has one result per message, {"ok":true,...} or {"error":{...}}, and
// "ok" at the top when every message was accepted.
func (s *Server) publishBatch(c echo.Context) error {
	body, err := s.readBody(c)
	if err != nil {
		return err
	}
	var batch struct {
		Messages []batchMessage `json:"messages"`
	}
	if err := json.Unmarshal(body, &batch); err != nil {
		return refuse(CodeInvalidJSON, "the body must be {\"messages\":[...]}")
	}
	if len(batch.Messages) > maxBatchMessages {
		return refuse(CodeInvalidData, fmt.Sprintf("at most %d messages in one batch", maxBatchMessages))
	}
	results := make([]batchResult, len(batch.Messages))
	all := true
	for i, m := range batch.Messages {
		var receipt broker.Receipt
		switch {
		case (m.Group == "") == (m.Channel == ""):
			err = refuse(CodeInvalidData, "a message needs a group or a channel")
		case len(m.Data) == 0:
			err = refuse(CodeInvalidData, "a message needs data")
		case len(m.IdempotencyKey) > maxIdempotencyKey:
			err = refuse(CodeInvalidData, "idempotency_key is too long")
		case m.Exclude != "" && m.Group == "":
			err = refuse(CodeInvalidData, `"exclude" is for group messages`)
		case m.Group != "":
			receipt, err = s.broker.GroupPublishWith(m.Group, m.Data, broker.PublishOptions{Key: m.IdempotencyKey, Except: m.Exclude})
		case m.IdempotencyKey != "":
			err = broker.ErrIdempotencyUnsupported
		default:
			err = s.broker.Send(m.Channel, m.Data)
		}
		if err != nil {
			code, message, _ := classify(err)
			s.metrics.errors.WithLabelValues(code).Inc()
			results[i].Error, all = &apiError{code, message}, false
			continue
		}
		s.metrics.published.WithLabelValues("api").Inc()
		results[i] = batchResult{OK: true, Offset: receipt.Offset, Epoch: receipt.Epoch, Duplicate: receipt.Duplicate}
	}
	return c.JSON(http.StatusOK, map[string]any{"ok": all, "results": results})
}

// accepted answers 202 {"ok":true}, written without encoding anything.
func accepted(c echo.Context) error {
	return c.JSONBlob(http.StatusAccepted, []byte(`{"ok":true}`))
}
