"""Storage: peewee models, database binding, and the reads and writes the API needs."""

from gateway.store import db, keystore


def close_connections() -> None:
    """Close every connection of this process to the database and the keystore, pooled ones
    too: before gunicorn forks its workers, and when an app is done with."""
    db.close_pool(db.database)
    db.close_pool(keystore.keystore)
