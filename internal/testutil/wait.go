package testutil

// WaitClosed waits until ch is closed, and fails the test with "timed out
// waiting for WHAT" after WaitTimeout: for a test that waits for another
// goroutine to finish, so that a hang fails it in seconds rather than at
// the test binary's deadline.
func WaitClosed(t TB, what string, ch <-chan struct{}) {
	t.Helper()
	Eventually(t, what, func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	})
}
