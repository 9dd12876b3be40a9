GO      ?= go
# The release is named in VERSION only (the binary embeds it too); the commit
# is the checkout's, or given (make COMMIT=…) where there is no git.
VERSION := $(shell cat VERSION)
COMMIT  ?= $(shell git describe --always --dirty --abbrev=12 --exclude='*' 2>/dev/null)
LDFLAGS := -X main.commit=$(COMMIT)

# Installation layout; DESTDIR is prepended to every path (for packaging).
PREFIX       ?= /usr/local
SYSCONFDIR   ?= /etc
LOGDIR       ?= /var/log/hipsterd
BINDIR       ?= $(PREFIX)/bin
UNITDIR      ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR  ?= $(PREFIX)/lib/sysusers.d
LOGROTATEDIR ?= $(SYSCONFDIR)/logrotate.d
MANDIR       ?= $(PREFIX)/share/man
CONFDIR      := $(SYSCONFDIR)/hipsterd

.PHONY: all build test vet fmt fuzz bench demo install deb clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o hipsterd ./cmd/hipsterd
	$(GO) build -o hipster-demo ./cmd/hipster-demo

# The whole suite, with the race detector, plus the static checks.
test: vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) test -race -count=1 ./...
	@# Allocation counts mean nothing under the race detector: once more without it.
	$(GO) test -count=1 -run '^TestAllocs' ./internal/server

vet:
	$(GO) vet ./...

fmt:
	gofmt -w .

# Each fuzz target for FUZZTIME, one after the other, on one worker. An
# input that fails is written to the package's testdata/fuzz, which `make
# test` runs; the other inputs found stay in Go's cache (go env GOCACHE).
# The server targets' timing makes coverage vary from run to run: minimizing
# each new input for Go's default minute would take most of the time.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -parallel 1 ./internal/config
	$(GO) test -run '^$$' -fuzz '^FuzzEscaping$$' -fuzztime $(FUZZTIME) -parallel 1 ./internal/accesslog
	$(GO) test -run '^$$' -fuzz '^FuzzHeader$$' -fuzztime $(FUZZTIME) -parallel 1 ./internal/acceptproxy
	$(GO) test -run '^$$' -fuzz '^FuzzRequestPath$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s -parallel 1 ./internal/server
	$(GO) test -run '^$$' -fuzz '^FuzzBackendResponse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s -parallel 1 ./internal/server

# Go benchmarks of the hot paths, with allocations per operation.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Runs hipsterd on configs/hipster.ini in front of two demo backends.
demo: build
	./scripts/demo.sh

# Installs the binary `make` built (so `sudo make install` needs no Go in
# root's PATH), the man pages, the commented sample config (never over an
# existing one, with its access log moved to LOGDIR), the log directory (so
# that -t passes before systemd's LogsDirectory= first makes it its own), the
# systemd unit, the sysusers entry and the logrotate file.
install:
	@test -x hipsterd || { echo 'make install: no ./hipsterd: run make first (as yourself), then sudo make install' >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(CONFDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(LOGROTATEDIR) \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -d -m 0750 $(DESTDIR)$(LOGDIR)
	install -m 0755 hipsterd $(DESTDIR)$(BINDIR)/hipsterd
	install -m 0644 docs/hipsterd.8 $(DESTDIR)$(MANDIR)/man8/hipsterd.8
	install -m 0644 docs/hipsterd.ini.5 $(DESTDIR)$(MANDIR)/man5/hipsterd.ini.5
	test -e $(DESTDIR)$(CONFDIR)/hipsterd.ini || \
		sed 's|/var/log/hipsterd/|$(LOGDIR)/|' configs/hipsterd.ini > $(DESTDIR)$(CONFDIR)/hipsterd.ini
	sed -e 's|/usr/local/bin/hipsterd|$(BINDIR)/hipsterd|g' -e 's|/etc/hipsterd/|$(CONFDIR)/|g' \
		configs/hipsterd.service > $(DESTDIR)$(UNITDIR)/hipsterd.service
	install -m 0644 configs/hipsterd.sysusers $(DESTDIR)$(SYSUSERSDIR)/hipsterd.conf
	sed 's|/var/log/hipsterd/|$(LOGDIR)/|g' configs/hipsterd.logrotate > $(DESTDIR)$(LOGROTATEDIR)/hipsterd
	chmod 0644 $(DESTDIR)$(UNITDIR)/hipsterd.service $(DESTDIR)$(LOGROTATEDIR)/hipsterd $(DESTDIR)$(CONFDIR)/hipsterd.ini

# Builds hipsterd_$(VERSION)_ARCH.deb in DEBDIR with dpkg-deb: a static,
# stripped binary (no libc dependency) and what `make install` installs
# under /usr and /etc. The scripts and the control file are in packaging/deb.
DEBDIR     ?= .
MAINTAINER ?= hipsterd maintainers <hipsterd@invalid>
deb:
	CGO_ENABLED=0 $(MAKE) build LDFLAGS="-s -w $(LDFLAGS)"
	MAKE="$(MAKE)" VERSION="$(VERSION)" MAINTAINER="$(MAINTAINER)" ./packaging/deb/build.sh $(DEBDIR)

clean:
	rm -f hipsterd hipster-demo hipsterd-access.log hipsterd_*.deb
