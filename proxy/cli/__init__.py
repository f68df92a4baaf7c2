"""The command line: seamline serve | check-config | accounts."""
