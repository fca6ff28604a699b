-- Revision 0006, frozen.
-- The services' ledgers are pruned (finished rows older than ledger_retention_days) and
-- read every beat: indexes that keep both fast at a million rows.
-- Runs not yet finished, for the script runner's checks per script per beat (`_running`:
-- by script and epoch; closing a previous owner's runs: every running row).
CREATE INDEX script_run_running_idx ON script_run (script, epoch) WHERE status = 'running';
-- Retention: the oldest finished rows first, without reading the unfinished ones.
CREATE INDEX script_run_finished_idx ON script_run (finished_at) WHERE status <> 'running';
CREATE INDEX folder_file_finished_idx ON folder_file (finished_at)
    WHERE state IN ('processed', 'failed', 'refused');
-- The folder monitor's queries every beat (claims, batches, adoption) are served by
-- folder_file_folder_state_idx: the rows in flight are few, and a second index on them
-- would only slow the intake.
