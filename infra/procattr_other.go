//go:build !unix

package infra

import "os/exec"

func detach(*exec.Cmd) {}
