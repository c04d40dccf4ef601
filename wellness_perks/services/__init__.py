"""Every business rule of wellness-perks. Views, CLI commands and tasks only call these."""
