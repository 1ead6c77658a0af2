"""deepscout.ui: the HTTP server — chat page, research API (REST + SSE), OpenAI-compatible endpoints.

``app.create_app(settings)`` builds the FastAPI app; ``server.build_server`` runs it under uvicorn
(``deepscout serve``). ``rendering`` is the one HTML rendering path (Jinja2 + markdown-it-py + nh3).
"""
