"""Model handlers, one module per model family (LitServe LitAPI style); discovered by app.serving.registry."""
