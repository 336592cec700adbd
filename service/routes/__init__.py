"""HTTP routers: thin shells over the service's objects (see docs/api.md)."""
