// pause: the sandbox process of every pod (containerd's sandbox_image). It holds the pod's namespaces open, reaps
// the zombies a shared PID namespace leaves it as PID 1, and exits 0 on SIGINT or SIGTERM. Static (CGO_ENABLED=0),
// built by hack/build-images with -trimpath and no build ID so that one source gives one binary.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
