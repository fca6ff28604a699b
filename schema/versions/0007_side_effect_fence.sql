-- The fence outside the database: a file's identity on disk, the incarnation handling it
-- now (a new owner leaves it alone until that one is done or its lease has run out), and
-- the incarnation that runs each script run.

ALTER TABLE folder_file
    ADD COLUMN dev BIGINT,
    ADD COLUMN inode BIGINT,
    ADD COLUMN handler UUID,
    ADD COLUMN handling_since TIMESTAMPTZ;

-- A finished record no longer blocks its name: a second copy with the same name, size and
-- mtime (cp -p, rsync -t) is a new arrival. One open record per name at a time.
DELETE FROM folder_file AS s WHERE s.state = 'seen' AND EXISTS (
    SELECT 1 FROM folder_file AS o WHERE o.folder = s.folder AND o.rel_path = s.rel_path
    AND o.state IN ('seen', 'claimed', 'processing') AND o.id < s.id);
ALTER TABLE folder_file DROP CONSTRAINT folder_file_arrival_key;
CREATE UNIQUE INDEX folder_file_open_key ON folder_file (folder, rel_path)
    WHERE state IN ('seen', 'claimed', 'processing');
CREATE INDEX folder_file_handler_idx ON folder_file (handler) WHERE handler IS NOT NULL;

ALTER TABLE script_run ADD COLUMN incarnation UUID;
ALTER TABLE script_run DROP CONSTRAINT script_run_status_check;
ALTER TABLE script_run ADD CONSTRAINT script_run_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'timeout', 'killed'));
