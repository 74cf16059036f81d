package broker

import (
	"fmt"
	"slices"
	"strings"
)

// EligibleTypes returns the ids of the server types whose tags cover tags,
// in increasing order: the types a job with these tags may run on, which
// are computed once, when it is submitted. It fails, naming them, when a
// tag is not registered, and when no type covers the set. The platform API
// and the console's test jobs both ask it, so that a job is refused for the
// same reasons whoever sends it.
func EligibleTypes(tags []string, registered func(tag string) bool, types []ServerType) ([]int64, error) {
	var unknown []string
	for _, t := range tags {
		if !registered(t) {
			unknown = append(unknown, t)
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown tag(s): %s", strings.Join(unknown, ", "))
	}
	var ids []int64
	for _, t := range types {
		if t.Covers(tags) {
			ids = append(ids, t.ID)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("no server type covers the tags [%s]; ask the operator for a server type with all of them", strings.Join(tags, " "))
	}
	slices.Sort(ids)
	return ids, nil
}
