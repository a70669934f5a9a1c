"""Models with known answers, for tests and the demo."""
