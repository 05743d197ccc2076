"""Development tools for the cascade router: mock OpenAI backends and `cascade demo`."""
