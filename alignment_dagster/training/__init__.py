"""Model training with TRL: reward models (RewardTrainer) and policies (DPOTrainer)."""
