"""Controllers: turn signals into hyperparameter multipliers (rules, plateau, Q-learning, REINFORCE, GRU)."""
