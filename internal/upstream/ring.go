package upstream

import (
	"slices"
	"strconv"
)

// pointsPerShare is how many places on the ring each share of a backend
// gets: enough that shares come out within a few percent.
const pointsPerShare = 160

// ring is a consistent-hash ring: a client hashes to a point and takes the
// backend owning the next point. A backend's points derive from its name, so
// removing (or losing) one backend moves only the clients it had.
type ring struct {
	points []uint64
	owners []int32 // index into the pool's unique backends, per point
}

func newRing(backends []*Backend, share []int64) ring {
	type point struct {
		hash  uint64
		owner int32
	}
	var pts []point
	for i, b := range backends {
		for v := 0; v < int(share[i])*pointsPerShare; v++ {
			pts = append(pts, point{hashString(b.Name + "#" + strconv.Itoa(v)), int32(i)})
		}
	}
	slices.SortFunc(pts, func(a, b point) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
	r := ring{points: make([]uint64, len(pts)), owners: make([]int32, len(pts))}
	for i, p := range pts {
		r.points[i], r.owners[i] = p.hash, p.owner
	}
	return r
}

// pick returns the first backend at or after key that is up and not tried.
func (r ring) pick(backends []*Backend, key uint64, tried []*Backend) *Backend {
	n := len(r.points)
	start, _ := slices.BinarySearch(r.points, key)
	for i := 0; i < n; i++ {
		b := backends[r.owners[(start+i)%n]]
		if b.Up() && !slices.Contains(tried, b) {
			return b
		}
	}
	return nil
}

// hashString is FNV-1a with a final mix, so that near keys (10.0.0.1,
// 10.0.0.2) land far apart on the ring.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
