"""Column names the data loaders write and the rewards read: a leaf, free of torch and datasets."""

# The rendered prompt text goes in `prompt` (what the policy sees); a conversational prompt's
# messages stay here, so the rewards get them as TRL passes them.
CONVERSATION_COLUMN = "prompt_messages"

# What TRL's GRPOTrainer passes to every reward function besides the dataset columns: a dataset
# column may not carry one of these names.
REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")

# A tool episode's messages after the prompt (assistant turns with their tool calls, tool results), which the
# engines add to a rollout's columns: what TRL passes reward functions as `completions` in tool runs.
EPISODE_COLUMN = "conversation"
# Every column a tool episode adds to a rollout (engines/tools.py): a dataset column may not carry one of these.
EPISODE_COLUMNS = (EPISODE_COLUMN, "tool_calls", "tool_failures", "tool_seconds", "environment_rewards", "environments")
