"""The InferenceServer client: archives, submit (and later poll, download, delete)."""
