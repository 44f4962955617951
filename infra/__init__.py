"""Process-level plumbing shared by every tnllm process: settings, CLI, launcher, embedded Redis."""
