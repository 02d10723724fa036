"""The command line: the `rlhf-app` dispatcher (main.py) and one thin module per command (train, eval,
push, report, env), each parsing its arguments and printing; the work happens in the modules they call."""
