package web

import (
	"testing"
	"time"
)

// TestGate: the gate runs what it starts, refuses to start anything once
// closed, and wait returns only when every started goroutine has ended.
func TestGate(t *testing.T) {
	var g gate
	release := make(chan struct{})
	ended := make(chan struct{})
	if !g.start(func() { <-release; close(ended) }) {
		t.Fatal("an open gate refused a goroutine")
	}
	g.close()
	if !g.closing() {
		t.Error("closing false after close")
	}
	ran := make(chan struct{}, 1)
	if g.start(func() { ran <- struct{}{} }) {
		t.Error("a closed gate started a goroutine")
	}
	waited := make(chan struct{})
	go func() { g.wait(); close(waited) }()
	select {
	case <-waited:
		t.Fatal("wait returned while a started goroutine ran")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-waited
	select {
	case <-ended:
	default:
		t.Error("wait returned before the goroutine ended")
	}
	select {
	case <-ran:
		t.Error("the refused function ran")
	default:
	}
}
