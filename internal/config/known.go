package config

import "slices"

// KnownKeys returns the section types and the keys each accepts, as the
// loader knows them, so that documentation can be checked against them.
func KnownKeys() map[string][]string {
	keys := make(map[string][]string, len(knownKeys))
	for typ, names := range knownKeys {
		keys[typ] = slices.Clone(names)
	}
	return keys
}
