"""What users run: the CLI, in-process runs, the comparison, lineage, the web server and docs."""
