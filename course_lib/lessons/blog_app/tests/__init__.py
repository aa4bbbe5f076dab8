"""The package's own tests: in-process, a fresh database each, the DB dependency overridden where useful."""
