"""Inbox scoring: discover new files, claim them in the SQLite manifest, score each once, quarantine failures."""
