"""Column names the data loaders write and the rewards read: a leaf, free of torch and datasets."""

# The rendered prompt text goes in `prompt` (what the policy sees); a conversational prompt's
# messages stay here, so the rewards get them as TRL passes them.
CONVERSATION_COLUMN = "prompt_messages"
