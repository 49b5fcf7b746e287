"""What subscribers rely on: the audit subscriber and the event documentation (JSON Schemas,
AsyncAPI) generated from the event models."""
