"""Property-based tests that throw random requests, records and statuses at a node and check it holds up."""
