"""Alembic migrations of the voice library's schema (``server.voices`` runs them at start).

A new schema change is a new revision in ``versions/``; write it by hand against
``op`` (revisions never import today's tables, which will have moved on).
"""
