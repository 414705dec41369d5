"""Architecture search: candidate evaluation (mini-KD + latency + reward), strategies (LSTM, Optuna, random), stage."""
