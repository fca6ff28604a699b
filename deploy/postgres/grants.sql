-- celery-failover: exactly the rights the nodes use, on the objects of the schema's head.
--
-- Run after every `failover db upgrade` (before the nodes of the new release start), as
-- the owner or a superuser:
--
--   psql -v ON_ERROR_STOP=1 "postgresql://failover_owner@db1:5432/failover" \
--     -f deploy/postgres/grants.sql
--
-- It takes back whatever the nodes' role (and PUBLIC) held on the product's objects, then
-- grants, so running it again changes nothing and a right dropped here is dropped on the
-- server too. It names only the product's objects: a team's own tables keep their grants.

BEGIN;

REVOKE ALL ON TABLE
    server_registry, service_status, ownership_history, service_tick, folder_file,
    script_run, script_schedule, node_event, alembic_version
FROM PUBLIC, failover_node;

REVOKE ALL ON FUNCTION
    failover_heartbeat(TEXT, UUID, BOOLEAN, REAL, REAL, REAL, BOOLEAN, TEXT, BOOLEAN, BOOLEAN),
    failover_heartbeat(TEXT, UUID, BOOLEAN, REAL, REAL, REAL, BOOLEAN, TEXT),
    failover_heartbeat(TEXT, UUID, BOOLEAN, REAL, REAL, REAL, BOOLEAN),
    failover_fence(TEXT, BIGINT, TEXT, UUID, BOOLEAN, BOOLEAN),
    failover_busy(TEXT),
    failover_lease_holds(server_registry, TIMESTAMPTZ),
    failover_incarnation_gone(UUID, UUID),
    service_status_record_change(),
    ownership_history_append_only(),
    server_registry_record_event()
FROM PUBLIC, failover_node;

-- The registry: a node registers (INSERT ... ON CONFLICT DO UPDATE), renews, marks dead
-- peers inactive, stops and drains (UPDATE), and removes nodes stopped longer than
-- FAILOVER_NODE_RETENTION_DAYS when it registers (DELETE).
GRANT SELECT, INSERT, UPDATE, DELETE ON server_registry TO failover_node;

-- Owners and epochs: a node declares its services' rows (INSERT ... ON CONFLICT DO
-- NOTHING), and changes owners and handovers (UPDATE; the trigger checks the epoch).
GRANT SELECT, INSERT, UPDATE ON service_status TO failover_node;

-- The history: read by status, history, web and metrics; written only by the trigger on
-- service_status, which runs as the node (INSERT). No UPDATE, DELETE or TRUNCATE: with the
-- append-only trigger, two locks on it.
GRANT SELECT, INSERT ON ownership_history TO failover_node;

-- Fenced ticks of each service per epoch (INSERT ... ON CONFLICT DO UPDATE).
GRANT SELECT, INSERT, UPDATE ON service_tick TO failover_node;

-- The folder monitor's ledger: arrivals, claims, outcomes; a sighting whose file went, a
-- claim undone, and retention delete.
GRANT SELECT, INSERT, UPDATE, DELETE ON folder_file TO failover_node;

-- The script runner's ledger: runs recorded, ended and closed; retention deletes.
GRANT SELECT, INSERT, UPDATE, DELETE ON script_run TO failover_node;

-- Each script's last slot (INSERT ... ON CONFLICT DO NOTHING, then UPDATE).
GRANT SELECT, INSERT, UPDATE ON script_schedule TO failover_node;

-- The nodes' events: written by the trigger on server_registry (INSERT), read by the
-- timeline, and pruned with the ledgers (DELETE). The pruning locks the rows it deletes
-- (FOR UPDATE SKIP LOCKED, so two owners pruning at once skip each other's rows), and
-- PostgreSQL locks a row only for a role that may update a column of it: one column, the
-- id, whose value means nothing to anyone (the nodes update no event).
GRANT SELECT, INSERT, DELETE ON node_event TO failover_node;
GRANT UPDATE (id) ON node_event TO failover_node;

-- The functions the nodes call (the heartbeat with ten arguments; with eight, the previous
-- release's, during a rolling upgrade). The trigger functions need no grant: PostgreSQL checks
-- EXECUTE on them when a trigger is created, not when it fires.
GRANT EXECUTE ON FUNCTION
    failover_heartbeat(TEXT, UUID, BOOLEAN, REAL, REAL, REAL, BOOLEAN, TEXT, BOOLEAN, BOOLEAN),
    failover_heartbeat(TEXT, UUID, BOOLEAN, REAL, REAL, REAL, BOOLEAN, TEXT),
    failover_heartbeat(TEXT, UUID, BOOLEAN, REAL, REAL, REAL, BOOLEAN),
    failover_fence(TEXT, BIGINT, TEXT, UUID, BOOLEAN, BOOLEAN),
    failover_busy(TEXT),
    failover_lease_holds(server_registry, TIMESTAMPTZ),
    failover_incarnation_gone(UUID, UUID)
TO failover_node;

COMMIT;
