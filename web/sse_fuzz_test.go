package web

import (
	"bytes"
	"testing"
)

// FuzzSplitFrames: a POST body splits into lines that join back into it
// (less one last newline), each within the frame limit and at most a
// burst of them, or is refused whole.
func FuzzSplitFrames(f *testing.F) {
	for _, seed := range []string{"", "\n", "\n\n", `{"type":"ping"}`, "{}\n{}\n", "a\n\nb", "x\r\ny"} {
		f.Add([]byte(seed))
	}
	s := &Server{cfg: Config{MaxFrameBytes: 8, FramesPerSecond: 2}}
	f.Fuzz(func(t *testing.T, body []byte) {
		frames, err := s.splitFrames(body)
		if err != nil {
			return
		}
		if len(frames) == 0 || len(frames) > 4 {
			t.Fatalf("%d frames", len(frames))
		}
		for _, fr := range frames {
			if len(fr) > 8 || bytes.IndexByte(fr, '\n') >= 0 {
				t.Fatalf("frame %q", fr)
			}
		}
		if joined := bytes.Join(frames, []byte{'\n'}); !bytes.Equal(joined, bytes.TrimSuffix(body, []byte{'\n'})) {
			t.Fatalf("%q split into %q", body, frames)
		}
	})
}
