"""gapscope's batch job runner (`python -m batch --help`)."""
