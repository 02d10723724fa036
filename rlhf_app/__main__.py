"""`python -m rlhf_app COMMAND ...` (and `accelerate launch -m rlhf_app train ...`): the `rlhf-app` command."""
from rlhf_app.cli.main import main

main()
