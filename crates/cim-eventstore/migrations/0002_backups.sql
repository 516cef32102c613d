-- The backups of this schema's history that `cim backup` completed: one row per backup, written
-- after its manifest, so a row means the backup at `target` holds every event up to `position`.
-- It lives beside the events it describes: a database restored from elsewhere starts with none
-- (its history is not backed up from here yet), and the service that owns the schema exports the
-- newest as cim_backup_last_success_timestamp_seconds without reaching into anything else.
-- Not part of a backup, and not a projection (`cim replay` leaves it alone).
CREATE TABLE backups (
    backup_id     text        NOT NULL,
    completed_at  timestamptz NOT NULL,
    target        text        NOT NULL,
    position      bigint      NOT NULL,
    events        bigint      NOT NULL,
    PRIMARY KEY (backup_id)
);

CREATE INDEX backups_completed_at ON backups (completed_at);
