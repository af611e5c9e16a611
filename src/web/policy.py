"""The Content-Security-Policy of every answer: scripts and styles only from the relay
itself (nothing from a CDN, no inline script), no plugins, no framing by other sites."""

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
