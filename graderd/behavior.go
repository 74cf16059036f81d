package graderd

// Values of Config.TestBehavior. Each makes graderd misbehave in one way, so
// that the broker's handling of faulty servers can be tested against a real
// graderd (the --testbehavior flag).
const (
	// TestBehaviorNormal runs jobs normally.
	TestBehaviorNormal = 0
	// TestBehaviorHang accepts each job and never answers, while still
	// heartbeating, so that its lease lasts until the broker's deadline.
	TestBehaviorHang = 1
	// TestBehaviorSlowStart waits 60 seconds before starting each job.
	TestBehaviorSlowStart = 2
	// TestBehaviorFatal reports every job FATAL with the result
	// {"error":"testbehavior 3"}, without running an executor.
	TestBehaviorFatal = 3
	// TestBehaviorTemporary reports every job TEMPORARY.
	TestBehaviorTemporary = 4
	// TestBehaviorInvalidResult reports every job OK with a result that is
	// not JSON, which the broker must refuse or fail.
	TestBehaviorInvalidResult = 5
	// TestBehaviorEcho reports every job OK with its own jobdata as result.
	TestBehaviorEcho = 6

	maxTestBehavior = TestBehaviorEcho
)
