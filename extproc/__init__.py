"""cascade router: an Envoy ext_proc server that picks the cheapest model tier per chat request."""

__version__ = "0.1.0"
