"""Where data lives: PostgreSQL's pool and migrations, and the filestore (local or S3)."""
