"""End-to-end tests against the real Docker engine, real git and a real `serve` subprocess."""
