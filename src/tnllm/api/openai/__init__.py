"""The OpenAI-compatible surface: request/response models, the adapter onto the job contract,
streaming chunks, error shapes and the Batch API's files, records and finalizer."""
