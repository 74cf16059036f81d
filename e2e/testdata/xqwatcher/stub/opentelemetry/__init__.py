"""A no-op stand-in for the OpenTelemetry API and SDK, enough for
xqueue_watcher/metrics.py to import and run: Debian has no python3
package of OpenTelemetry, and PyPI is out of reach where the tests run.
A test fixture; the watcher itself is not changed."""
