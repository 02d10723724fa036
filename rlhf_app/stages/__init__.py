"""The stages before PPO on TRL's own trainers: `sft` (SFTTrainer) and `rm` (RewardTrainer).

Each stage module has `run(cfg) -> Path`, the final/ folder it wrote; common.py holds what both share
(Trainer arguments, metrics.jsonl, signals, the run folder, the final save); data.py their datasets' checks.
"""
