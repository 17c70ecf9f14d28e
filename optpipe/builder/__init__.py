"""One build: options, plan, run, variant selection, the output directory, split finish, verify, sweep."""
