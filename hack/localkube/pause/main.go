// Command pause is the sandbox ("pause") container of the localkube node: it
// holds a pod's namespaces open and does nothing else. It stands in for
// registry.k8s.io/pause, which cannot be pulled on machines without internet.
//
// Like the upstream C program it exits 0 on SIGTERM or SIGINT and reaps the
// children it inherits when the pod shares one PID namespace
// (shareProcessNamespace: true), where it is PID 1.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause (localkube)")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1, orphans will not be reaped here")
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "pause: shutting down, got signal %v\n", sig)
			return
		}
		reap()
	}
}

// reap collects every exited child. Signals coalesce, so one SIGCHLD can
// stand for several exits: loop until none is left.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
