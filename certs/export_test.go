package certs

import "time"

// SetWatchTimings lets the external tests shorten Watch's debounce and poll,
// turn off fsnotify (to test polling or SIGHUP alone), and learn when Watch
// has caught SIGHUP and is watching the files. Call it before Watch.
func SetWatchTimings(s *Source, debounce, poll time.Duration, noNotify bool, onWatch func()) {
	s.debounce = debounce
	s.pollInterval = poll
	s.noNotify = noNotify
	s.onWatch = onWatch
}

// SetOnPoll makes Watch call fn after each poll of the files, so that a
// test can wait for polls. Call it before Watch.
func SetOnPoll(s *Source, fn func()) { s.onPoll = fn }
