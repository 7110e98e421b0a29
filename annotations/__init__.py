"""The database: catalog of datasets and images, viewer sessions (and later annotations).

SQLAlchemy 2 models with Alembic migrations; services return plain records, never ORM rows.
This package never imports the web layer.
"""
