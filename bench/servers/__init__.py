"""The usual alternatives the service is compared with; benchmark-only, never shipped."""
