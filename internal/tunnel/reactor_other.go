//go:build !linux

package tunnel

// watch reports that there is no reactor here: every tunnel runs on
// goroutines.
func watch(*tunnel) (arm func()) { return nil }
