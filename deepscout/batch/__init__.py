"""Batch research jobs: many questions from a JSONL/CSV file, answered by concurrent agent sessions that
share one loaded model, durable in ``memory`` (resumable after any crash, each record answered exactly
once in the output), on local threads or as Ray tasks. The Python API is :mod:`deepscout.batch.batch_api`.
"""
