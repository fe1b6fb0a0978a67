"""Tables. Subjects appear only as HMAC pseudonyms; PII values only encrypted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from peewee import (
    AutoField,
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    CompositeKey,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from gateway.store.db import database, serializes_writers


class UTCDateTimeField(DateTimeField):
    """Aware UTC datetimes in Python, naive UTC in the database."""

    def db_value(self, value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value: Any) -> Any:
        value = super().python_value(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class ApiClient(BaseModel):
    name = CharField(unique=True)
    role = CharField()
    purposes = TextField(default="[]")  # JSON list of purpose ids
    key_hash = CharField(unique=True)
    created_at = UTCDateTimeField()
    revoked_at = UTCDateTimeField(null=True)


class Subject(BaseModel):
    pseudonym = CharField(unique=True)  # the data key lives in the keystore under this name
    created_at = UTCDateTimeField()
    # the raw id encrypted with the subject's own data key (unreadable once it is destroyed), so
    # that a recipient's resync can name the subject; NULL until its first consent change
    sealed_id = TextField(null=True)


class ConsentRecord(BaseModel):
    subject = ForeignKeyField(Subject, backref="consents", on_delete="CASCADE")
    receipt_id = CharField(unique=True)
    purpose = CharField()
    granted = BooleanField()
    source = CharField()
    notice_version = CharField()
    recorded_at = UTCDateTimeField()
    expires_at = UTCDateTimeField(null=True)
    client = CharField()
    policy_hash = CharField()
    # the signing key of the receipt, so receipts survive key rotation
    key_id = CharField(default="")
    signature = TextField()
    # a record made from an IAB TCF string: what the string says of itself, and its SHA-256
    # (never the string); NULL for every other source
    tcf_cmp_id = IntegerField(null=True)
    tcf_vendor_list_version = IntegerField(null=True)
    tcf_policy_version = IntegerField(null=True)
    tcf_last_updated = UTCDateTimeField(null=True)
    tcf_sha256 = CharField(null=True)
    # when the scheduler should tell the purpose's recipients that this grant lapsed (set at a
    # grant with an end, from `grant_expiry`); NULL once it has looked, and for any other record
    expiry_notice_at = UTCDateTimeField(null=True)

    class Meta:
        indexes = (
            (("subject", "purpose", "recorded_at"), False),
            (("expiry_notice_at",), False),  # the grants lapsed and not yet looked at
        )


class Attribute(BaseModel):
    subject = ForeignKeyField(Subject, backref="attributes", on_delete="CASCADE")
    database = CharField()
    name = CharField()
    value = TextField()  # JSON, or an encrypted token when `sealed`
    sealed = BooleanField(default=False)
    updated_at = UTCDateTimeField()

    class Meta:
        indexes = (
            (("subject", "database", "name"), True),
            (("name", "updated_at"), False),  # purges select by name and age
        )


class Event(BaseModel):
    subject = ForeignKeyField(Subject, backref="events", on_delete="CASCADE")
    database = CharField()
    type = CharField()
    item_id = TextField()
    item_category = TextField()
    sealed = BooleanField(default=False)
    at = UTCDateTimeField()
    received_at = UTCDateTimeField()

    class Meta:
        indexes = (
            (("subject", "database", "type", "at"), False),
            (("type", "at"), False),  # purges select by type and age
        )


class EventTally(BaseModel):
    """A subject's events of one database, type, item category and UTC day, counted.

    Kept by triggers on `event` (gateway/store/tallies.py) in the transaction of each insert,
    delete or update, so it always counts exactly the rows stored, however they changed: a
    decision reads a subject's history as these rows, whatever its length. `category` is the
    event's item category as stored (a deterministic token when `sealed`). `moment` sums the
    events' milliseconds past midnight, so `moment / count` places their mean time.
    """

    # indexed by the primary key, which starts with it
    subject = ForeignKeyField(Subject, backref="tallies", on_delete="CASCADE", index=False)
    database = CharField()
    type = CharField()
    day = IntegerField()  # days since 1970-01-01 (UTC)
    sealed = BooleanField()
    category = TextField()
    count = IntegerField()
    moment = BigIntegerField()

    class Meta:
        # in the order a decision's sums group them: per database and type, per category
        primary_key = CompositeKey("subject", "database", "type", "sealed", "category", "day")

    @classmethod
    def create_table(cls, safe: bool = True, **options: Any) -> None:
        # On SQLite the rows live in key order (WITHOUT ROWID): a subject's tallies are read
        # together, each with no lookup of a row by its rowid.
        cls._meta.without_rowid = serializes_writers(cls._meta.database)  # type: ignore[attr-defined]
        super().create_table(safe, **options)


class AuditEntry(BaseModel):
    seq = IntegerField(primary_key=True)
    at = CharField()  # ISO 8601 text, hashed exactly as stored
    actor = CharField()
    action = CharField()
    subject = CharField(null=True)  # pseudonym
    purpose = CharField(null=True)
    outcome = CharField(null=True)
    reasons = TextField(default="[]")
    fields = TextField(default="{}")
    policy_hash = CharField()
    request_id = CharField(null=True)
    decision_id = CharField(null=True)
    prev_hash = CharField()
    hash = CharField(unique=True)
    # Scheme 2 on (schema version 5): the scheme and the entry's own id are hashed too.
    # Entries of scheme 1, chained before, have neither (NULL).
    scheme = IntegerField(null=True)
    entry_id = CharField(null=True, unique=True)

    class Meta:
        indexes = (
            (("subject", "seq"), False),
            (("purpose", "seq"), False),
            (("action", "seq"), False),
            (("actor", "seq"), False),
            (("at",), False),
        )


class AuditPending(BaseModel):
    """An audit entry written in the transaction of what it records, not yet chained.

    `mac` is an HMAC under a key of the keyring (outside the database) over the entry's
    columns, so an entry edited while it waits here is not chained as if it were true. The
    sequencer moves entries from here into the chain in `id` order, batch by batch.
    """

    id = BigAutoField()
    entry_id = CharField(unique=True)
    at = CharField()
    actor = CharField()
    action = CharField()
    subject = CharField(null=True)
    purpose = CharField(null=True)
    outcome = CharField(null=True)
    reasons = TextField(default="[]")
    fields = TextField(default="{}")
    policy_hash = CharField()
    request_id = CharField(null=True)
    decision_id = CharField(null=True)
    mac = CharField()


class AuditCheckpoint(BaseModel):
    """An Ed25519 signature over (seq, hash, at, key_id, every) of one audit entry: a required
    checkpoint at a multiple of the interval, or a signed head. `every` (NULL before scheme 2)
    is the interval in force, which places the next required checkpoint."""

    id = AutoField()
    seq = IntegerField(unique=True)
    hash = CharField()
    at = CharField()
    key_id = CharField()
    signature = TextField()
    every = IntegerField(null=True)


class Lease(BaseModel):
    """A named, expiring database lock: only its holder may run the guarded job."""

    name = CharField(primary_key=True)
    holder = CharField()
    expires_at = UTCDateTimeField()


class PurgeRun(BaseModel):
    id = AutoField()
    started_at = UTCDateTimeField()
    finished_at = UTCDateTimeField(null=True)
    status = CharField()  # running, finished, failed, interrupted
    dry_run = BooleanField()
    holder = CharField()
    policy_hash = CharField()
    report = TextField(default="[]")  # JSON list of per-category results
    # rows deleted so far by "kind:category", written in each batch's own transaction
    progress = TextField(default="{}")


class KeyringFingerprint(BaseModel):
    """The fingerprint of the keyring that writes this database (one row): any other keyring
    would read none of its data, so it is refused rather than silently taking over."""

    fingerprint = CharField()  # `Keyring.fingerprint()`: the key id and a one-way digest
    recorded_at = UTCDateTimeField()


class KeyDestruction(BaseModel):
    """A subject's data key that a committed erasure entry ordered destroyed, until an entry
    confirms its destruction: whoever finds it pending destroys the key and confirms."""

    id = AutoField()
    pseudonym = CharField()
    # SHA-256 of the wrapped key: names the one key ordered destroyed (a later subject under the
    # same pseudonym gets a key of its own) and opens nothing
    key_fingerprint = CharField()
    ordered_by = IntegerField()  # seq of the audit entry that ordered it
    ordered_at = UTCDateTimeField()

    class Meta:
        indexes = ((("pseudonym", "key_fingerprint"), True),)


class Delivery(BaseModel):
    """One message for one recipient, written in the transaction of the change it reports.

    `payload` (the body, which names the subject by its raw id) is encrypted with the keyring's
    outbox key while the message waits, and set to NULL once it is delivered; the row itself
    names the subject by pseudonym only. `id` orders the messages of one recipient and subject.
    A grant's lapse is queued when the scheduler finds it (`ConsentRecord.expiry_notice_at`).
    """

    id = BigAutoField()
    message_id = CharField(unique=True)  # the `webhook-id`, the same on every attempt
    recipient = CharField()
    type = CharField()
    subject = CharField()  # pseudonym
    purpose = CharField(null=True)  # of a `consent.changed`
    payload = TextField(null=True)
    status = CharField()  # pending, delivered, failed
    attempts = IntegerField(default=0)
    created_at = UTCDateTimeField()
    next_attempt_at = UTCDateTimeField()
    claimed_by = CharField(null=True)
    claim_expires_at = UTCDateTimeField(null=True)
    last_error = TextField(null=True)
    finished_at = UTCDateTimeField(null=True)

    class Meta:
        indexes = (
            (("recipient", "subject", "id"), False),  # the earlier messages of a subject
            (("status", "next_attempt_at"), False),  # what is due
        )


TABLES: list[type[Model]] = [
    ApiClient,
    Subject,
    ConsentRecord,
    Attribute,
    Event,
    EventTally,
    AuditEntry,
    AuditPending,
    AuditCheckpoint,
    Lease,
    PurgeRun,
    KeyDestruction,
    KeyringFingerprint,
    Delivery,
]
