"""The test suite: a package, so its modules import `tests.support` under pytest's default import mode."""
