"""The sidecar's server: authentication, connection ownership, validation, the serve loop."""
