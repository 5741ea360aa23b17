"""Lab models handed to other tools: TransformerLens (`lens`)."""
