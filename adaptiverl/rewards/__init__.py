"""Rewards: reward functions that TRL trainers take, and their composite."""
