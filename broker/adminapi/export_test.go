package adminapi

import "time"

// SetNow replaces the service's clock, for tests of expiry.
func SetNow(s *Service, now func() time.Time) { s.now = now }
