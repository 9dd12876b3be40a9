module github.com/hipsterd/hipsterd

go 1.26.8

require (
	github.com/gorilla/websocket v1.5.3
	gopkg.in/ini.v1 v1.67.3
)

require golang.org/x/sys v0.49.0

require github.com/pires/go-proxyproto v0.15.0
