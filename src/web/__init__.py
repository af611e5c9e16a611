"""The HTTP side: health endpoints, Prometheus metrics and the REST API (FastAPI)."""
