"""`rlhf-app label`: a person picks the better of two completions on a local page (docs/labelling.md).

pairs.py reads the pairs to label, store.py keeps every choice on disk the moment it is made and
writes TRL's preference file from them, page.py is the Gradio page (the `label` extra).
"""

from rlhf_app.errors import UserError


class LabelError(UserError, ValueError):
    """An input, output or port the labelling page cannot use; the message is one line that names the fix."""
