"""What is kept: published runs and their atomic publishing (`runs`), the users' tags
and label fixes in SQLite (`annotations`) and applying or exporting them (`curation`)."""
