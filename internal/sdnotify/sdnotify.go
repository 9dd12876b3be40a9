// Package sdnotify tells systemd about the service's state (sd_notify(3)):
// a datagram to the unix socket named by $NOTIFY_SOCKET. Without that
// variable, as outside systemd, every call does nothing.
package sdnotify

import (
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The states hipsterd reports.
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
)

// Reloading is the state to send when a reload starts; systemd wants the
// monotonic clock with it (Type=notify-reload, and harmless for notify).
func Reloading() string {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Nano() / 1000
	return "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(usec, 10)
}

// Status is the state that sets the one line of free text systemctl status
// shows for the service; each run of white space in text, line breaks
// included, becomes one space.
func Status(text string) string {
	return "STATUS=" + strings.Join(strings.Fields(text), " ")
}

// Notify sends state to systemd, if it is listening. state may hold several
// assignments, one a line.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
