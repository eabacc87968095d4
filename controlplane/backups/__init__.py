"""Backups that restore: `helix backup DIR` while the platform runs, `helix restore DIR` into a
fresh installation. A backup is a folder: `database/` (each table, copied from one snapshot),
`files/` (the filestore's objects, local or S3) and `manifest.json`, written last."""
