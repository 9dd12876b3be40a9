package upstream

// startIdleWatcher starts the idle watcher's goroutine, which lives as
// long as the process, before a test counts goroutines.
func startIdleWatcher() { watcherOnce.Do(startWatcher) }
