package dispatch

import "github.com/gradebroker/gradebroker/broker/store"

func storeServerUpdate(maxJobs *int) store.ServerUpdate {
	return store.ServerUpdate{MaxConcurrentJobs: maxJobs}
}
