// Command hipster-demo is a tiny backend for trying hipsterd: each address it
// listens on answers HTTP requests with a line naming itself, and echoes
// WebSocket messages on /ws.
//
//	hipster-demo 127.0.0.1:8001 127.0.0.1:8002
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/gorilla/websocket"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hipster-demo ADDR [ADDR…]")
		os.Exit(2)
	}
	// Every address is bound before any serves, and before the line that
	// scripts/demo.sh waits for: a port taken is an error, not a silent
	// stand-in answering for this backend.
	var listeners []net.Listener
	for _, addr := range os.Args[1:] {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatalf("hipster-demo: %v", err)
		}
		listeners = append(listeners, l)
	}
	errs := make(chan error)
	for _, l := range listeners {
		go func() { errs <- http.Serve(l, handler(l.Addr().String())) }()
		log.Printf("demo backend listening on %s", l.Addr())
	}
	log.Print("demo backends ready")
	log.Fatal(<-errs)
}

func handler(name string) http.Handler {
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			t, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if c.WriteMessage(t, msg) != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from backend %s: %s %s (Host: %s)\n", name, r.Method, r.URL.RequestURI(), r.Host)
	})
	return mux
}
