"""Default timings of the serving runtime, in one place for the gateway, its standalone entry point and
`melplan serve` (standard library only, so the CLI can show them without importing the gateway)."""

DEFAULT_TIMEOUT_MS = 1000.0  # deadline of one request
DEFAULT_HEARTBEAT_MS = 50.0  # readiness check interval while idle
DEFAULT_HEDGE_MS = 10.0  # least wait for a component before also asking the route around its server
