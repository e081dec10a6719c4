"""Serving endpoints: request schemas, validation into the stored config, the operations
behind the management API, capacity decisions and the capacity timeline, wire views."""
