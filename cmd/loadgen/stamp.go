package main

import (
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"unsafe"
)

// socketStamp reads a TCP socket with the kernel's receive time of what
// it read (SO_TIMESTAMPNS: the time of the latest segment taken in). A
// delivery's latency to that time is the server's and the network's
// alone, without the time the frame then waited for the loader, which at
// high rates fills its core and reads late.
type socketStamp struct {
	rc syscall.RawConn // nil: no timestamps (not a TCP socket, or refused)

	// The read in flight, for recv, which rc.Read calls through read (a
	// method value made once: a closure per read would allocate).
	p    []byte
	oob  [64]byte
	n    int
	oobn int
	err  error
	recv func(fd uintptr) bool
}

// init turns the timestamps on for conn; they stay off (rc nil) when it
// is not a socket or the kernel refuses.
func (s *socketStamp) init(conn net.Conn) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return
	}
	s.rc, s.recv = rc, s.recvmsg
}

// read reads into p, waiting for data as net.Conn's Read does: the bytes
// read, when the kernel received them (unix ns, 0 if it did not say), and
// io.EOF at the end of the stream.
func (s *socketStamp) read(p []byte) (n int, at int64, err error) {
	s.p = p
	rerr := s.rc.Read(s.recv)
	n, err = s.n, s.err
	s.p, s.err = nil, nil
	switch {
	case rerr != nil:
		return 0, 0, rerr
	case err != nil:
		return 0, 0, err
	case n == 0:
		return 0, 0, io.EOF
	}
	return n, receivedAt(s.oob[:s.oobn]), nil
}

// recvmsg is read's one recvmsg(2); false asks rc.Read to wait for data.
func (s *socketStamp) recvmsg(fd uintptr) bool {
	for {
		s.n, s.oobn, _, _, s.err = syscall.Recvmsg(int(fd), s.p, s.oob[:], 0)
		if s.err != syscall.EINTR {
			break
		}
	}
	return s.err != syscall.EAGAIN
}

// receivedAt returns the SO_TIMESTAMPNS time in the control messages oob
// (unix ns), or 0 when there is none. cmsg_len and the timespec's two
// fields are machine words (a size_t and two longs).
func receivedAt(oob []byte) int64 {
	const hdr, word = syscall.SizeofCmsghdr, int(unsafe.Sizeof(uintptr(0)))
	for len(oob) >= hdr {
		size := int(nativeUint(oob, word))
		if size < hdr || size > len(oob) {
			return 0
		}
		level := int32(binary.NativeEndian.Uint32(oob[word:]))
		typ := int32(binary.NativeEndian.Uint32(oob[word+4:]))
		if level == syscall.SOL_SOCKET && typ == syscall.SCM_TIMESTAMPNS && size >= hdr+2*word {
			return int64(nativeUint(oob[hdr:], word))*1e9 + int64(nativeUint(oob[hdr+word:], word))
		}
		oob = oob[min(syscall.CmsgSpace(size-hdr), len(oob)):]
	}
	return 0
}

// nativeUint reads the native unsigned integer of size bytes (4 or 8) at b.
func nativeUint(b []byte, size int) uint64 {
	if size == 4 {
		return uint64(binary.NativeEndian.Uint32(b))
	}
	return binary.NativeEndian.Uint64(b)
}
