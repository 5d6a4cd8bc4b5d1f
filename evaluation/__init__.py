"""Reading labeled data, scoring chains on it, and the metrics (castline.evaluation)."""
