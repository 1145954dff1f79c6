"""Offline training scripts: python -m training.digits | training.objects | training.sentiment."""
