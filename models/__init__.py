"""Network definitions shared by the training scripts and the server."""
