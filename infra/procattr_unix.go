//go:build unix

package infra

import (
	"os/exec"
	"syscall"
)

// detach puts the child in its own process group: a Ctrl-C in the terminal reaches
// only the parent, which then stops its children in order.
func detach(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}
