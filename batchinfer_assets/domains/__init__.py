"""The built-in domains: card transactions (the default) and daily customer churn."""
