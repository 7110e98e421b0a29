"""Request handlers, grouped by resource."""
