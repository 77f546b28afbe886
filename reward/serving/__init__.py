"""Serving the reward model over HTTP: request validation (`api`), safe image reading (`images`), guarded URL fetching
(`fetch`), dynamic batching (`batcher`) and the FastAPI app (`app`). See docs/serving.md."""
