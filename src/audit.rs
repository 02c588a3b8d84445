//! The audit log: one JSON line per XKS request and per admin action, written off the request path.
