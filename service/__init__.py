"""The moecarve job service: a FastAPI app, a SQLite job store and spawned worker processes.

The API process never imports torch: it validates and plans recipes from model configs alone and
leaves every carve to a worker process (``service.worker``) started with ``spawn``.
"""
