"""Tools a policy may call mid-episode (TRL's `tools=[...]`): plain functions with type hints and a
Google-style docstring, which the chat template shows to the model as a JSON schema.

A recipe names one as `tools: [rlhf_app.tools.calculator:calculator]`.
"""
