"""Local platform: backing services and processes for `veza up` and the tests."""
