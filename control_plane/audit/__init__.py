"""The audit log: who did what to which target, when, from where, and how it ended.

`events` holds the recorded shape (`AuditEvent`, its `AuditResult` and `Actor` kinds),
`actions` the catalogue naming every management, permission, token, SCIM and billing route
(`AuditAction`) and what of a request names its target, `targets` the extraction of those
targets (identifiers only, never a body, a token or an environment variable's value),
`recorder` the write that never fails a request, and `middleware` (`AuditTrail`) the one
place that sees every such request once authentication has resolved its caller.
`control_plane.api.audit` lists the events (`GET /api/2.0/audit-log`). Nothing is
re-exported here: `control_plane.db.models` imports `events`, and the recorder imports the
models back.
"""
