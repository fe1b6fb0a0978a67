"""Storage: peewee models, database binding, and the reads and writes the API needs."""
