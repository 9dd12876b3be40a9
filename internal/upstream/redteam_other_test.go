//go:build !linux

package upstream

// startIdleWatcher: there is no idle watcher here.
func startIdleWatcher() {}
