"""Cross-backend checks (Polygraphy): runners over the Backend interface, comparison, JSON report."""
