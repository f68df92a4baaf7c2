"""Translators between the OpenAI chat API and the other dialects seamline speaks."""
