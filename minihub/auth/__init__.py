"""Authentication: who a request is (session cookie or API token), and password checks."""
