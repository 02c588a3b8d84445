//! The XKS Proxy API request path: route, SigV4, JSON, grants, AES-256-GCM, health.
