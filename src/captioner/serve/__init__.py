"""``captioner serve``: a local web demo and JSON API (FastAPI)."""
