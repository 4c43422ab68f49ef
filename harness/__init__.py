"""On-policy GRPO on GSM8K through the Tinker training API."""

__version__ = "0.1.0"
