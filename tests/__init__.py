"""The test suite, a package: shared helpers live in tests.support, imported without path tricks."""
