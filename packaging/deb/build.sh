#!/bin/sh
# Builds hipsterd_VERSION_ARCH.deb in the directory $1 with dpkg-deb, from
# what `make install` installs under /usr and /etc (the ./hipsterd already
# built), plus the documentation and the maintainer scripts beside this file.
# Called by `make deb`, which sets MAKE, VERSION and MAINTAINER.
set -eu
out=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
arch=$(dpkg --print-architecture)
deb="$out/hipsterd_${VERSION}_${arch}.deb"

stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
$MAKE --no-print-directory install DESTDIR="$stage" PREFIX=/usr >/dev/null

# Debian's layout: compressed man pages, the documentation and the
# copyright in /usr/share/doc/hipsterd.
gzip -9n "$stage"/usr/share/man/man5/hipsterd.ini.5 "$stage"/usr/share/man/man8/hipsterd.8
doc="$stage/usr/share/doc/hipsterd"
install -d "$doc"
install -m 0644 README.md docs/*.md "$doc"
gzip -9nc CHANGELOG.md > "$doc/CHANGELOG.md.gz"
# Debian's changelog, pointing at the project's, dated as its release.
released=$(sed -n "s/^## \[$VERSION\] - //p" CHANGELOG.md)
printf 'hipsterd (%s) unstable; urgency=medium\n\n  * Release %s: see CHANGELOG.md.gz.\n\n -- %s  %s\n' \
	"$VERSION" "$VERSION" "$MAINTAINER" "$(date -R -u -d "$released")" | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/CHANGELOG.md.gz" "$doc/changelog.gz"
{
	printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
	printf 'Upstream-Name: hipsterd\n\nFiles: *\n'
	printf 'Copyright: %s\n' "$(sed -n 's/^Copyright (c) //p' LICENSE)"
	printf 'License: MIT\n'
	sed -e '1,/^Copyright/d' -e 's/^$/./' -e 's/^/ /' LICENSE
} > "$doc/copyright"
chmod 0644 "$doc/copyright"

install -d -m 0755 "$stage/DEBIAN"
# Every file under /etc is the administrator's once installed.
(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$MAINTAINER|" \
	-e "s|@SIZE@|$size|" "$here/control" > "$stage/DEBIAN/control"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$stage/DEBIAN/"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"

dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
