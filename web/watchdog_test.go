package web

import (
	"testing"
	"time"

	"github.com/groupcast/groupcast/broker"
)

// TestWatchdogSkipsIdleConnections: the watchdog looks only at sessions
// with a writer goroutine, so idle connections cost it nothing however
// many there are; a session is in its care from its writer's start
// (which is when a write can block) until the writer is gone.
func TestWatchdogSkipsIdleConnections(t *testing.T) {
	e := newEnv(t, "", nil)
	for range 20 {
		e.dial().Join("g")
	}
	watched := func() int {
		e.srv.withWriterMu.Lock()
		defer e.srv.withWriterMu.Unlock()
		return len(e.srv.withWriter)
	}
	// The welcomes and acks went out; once the writers that sent any
	// are gone, the watchdog has nothing to watch.
	waitFor(t, 5*time.Second, func() bool { return watched() == 0 })

	e.srv.mu.Lock()
	var ss *session
	for s := range e.srv.sessions {
		ss = s
		break
	}
	e.srv.mu.Unlock()
	ss.Receive(broker.Delivery{Frame: []byte(`{"type":"message","group":"g","data":1}`), Kind: broker.KindMessage})
	e.srv.withWriterMu.Lock()
	_, in := e.srv.withWriter[ss]
	e.srv.withWriterMu.Unlock()
	if !in {
		t.Fatal("a session whose writer started is not in the watchdog's care")
	}
	waitFor(t, 5*time.Second, func() bool { return watched() == 0 })
}
