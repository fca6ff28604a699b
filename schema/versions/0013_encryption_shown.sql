-- Revision 0013, frozen.
-- Encryption on the operators' view (issue 20): each node says whether its connections to
-- the database and to the broker are encrypted (TLS), as it found them when it connected, so
-- `failover status`, its JSON and the metrics show a node that reaches a store in the clear.
-- The node reports its own side of the link (through PgBouncer, the link to PgBouncer).
-- Expand only: two nullable columns, a heartbeat with two more arguments, and the heartbeat
-- of the previous release's nodes (eight arguments) kept as a call of the new one.
ALTER TABLE server_registry
    ADD COLUMN database_encrypted BOOLEAN,
    ADD COLUMN broker_encrypted BOOLEAN;

-- The heartbeat of revision 0011, storing what the node says of its connections.
CREATE FUNCTION failover_heartbeat(
    p_node TEXT,
    p_incarnation UUID,
    p_healthy BOOLEAN,
    p_db_round_trip_ms REAL,
    p_broker_round_trip_ms REAL,
    p_heartbeat_cycle_ms REAL,
    p_everyone BOOLEAN,
    p_broker_server TEXT,
    p_database_encrypted BOOLEAN,
    p_broker_encrypted BOOLEAN
) RETURNS JSON
LANGUAGE plpgsql AS $$
DECLARE
    v_now TIMESTAMPTZ := clock_timestamp();
    v_renewed BOOLEAN;
    v_owners BIGINT[];
    v_server TEXT := COALESCE(
        host(inet_server_addr()) || ':' || inet_server_port(),
        'socket:' || current_setting('port'));
BEGIN
    UPDATE server_registry SET
        lease_started_at = CASE
            WHEN p_healthy AND (
                NOT is_active
                OR last_heartbeat_at + lease_timeout_s * interval '1 second' < v_now
                OR last_heartbeat_at + 1.5 * heartbeat_interval_s * interval '1 second' < v_now)
            THEN v_now ELSE lease_started_at END,
        last_heartbeat_at = CASE WHEN p_healthy THEN v_now ELSE last_heartbeat_at END,
        is_active = is_active OR p_healthy,
        joining_until = CASE WHEN p_healthy THEN NULL ELSE joining_until END,
        app_healthy = p_healthy,
        db_round_trip_ms = COALESCE(p_db_round_trip_ms, db_round_trip_ms),
        broker_round_trip_ms = COALESCE(p_broker_round_trip_ms, broker_round_trip_ms),
        heartbeat_cycle_ms = COALESCE(p_heartbeat_cycle_ms, heartbeat_cycle_ms),
        database_changed_at = CASE WHEN database_server <> v_server
            THEN v_now ELSE database_changed_at END,
        database_server = v_server,
        broker_changed_at = CASE WHEN broker_server <> p_broker_server
            THEN v_now ELSE broker_changed_at END,
        broker_server = COALESCE(p_broker_server, broker_server),
        database_encrypted = COALESCE(p_database_encrypted, database_encrypted),
        broker_encrypted = COALESCE(p_broker_encrypted, broker_encrypted)
    WHERE node_name = p_node AND incarnation = p_incarnation AND stopped_at IS NULL;
    v_renewed := FOUND;
    -- The owners' ids as an array: read by the primary key whatever the planner knows of
    -- service_status (a table of a few rows that autovacuum may never analyze).
    SELECT array_agg(service_registry_id) INTO v_owners
    FROM service_status WHERE service_registry_id IS NOT NULL;
    -- One statement (one snapshot of the tables, one database time) for what is returned.
    -- The whole registry only when this node may have to choose among candidates: a service
    -- without a live-looking owner (to claim or take over), a draining node handing over, or
    -- a failback policy. Otherwise itself and the owners (read by index: what a takeover
    -- needs judged), and, for an owner only, the peers that may have expired (a scan: the
    -- owners keep the registry tidy, so the other nodes' beats do not grow with the cluster).
    RETURN (
        WITH everyone AS (
            SELECT p_everyone
                OR EXISTS (SELECT 1 FROM server_registry WHERE node_name = p_node AND draining)
                OR EXISTS (SELECT 1 FROM service_status WHERE service_registry_id IS NULL)
                OR EXISTS (
                    SELECT 1 FROM server_registry AS o
                    WHERE o.id = ANY(v_owners) AND (NOT o.is_active OR o.stopped_at IS NOT NULL
                       OR o.last_heartbeat_at + o.lease_timeout_s * interval '1 second' < v_now)
                ) AS complete,
                EXISTS (
                    SELECT 1 FROM server_registry AS mine
                    WHERE mine.node_name = p_node AND mine.id = ANY(v_owners)
                ) AS owner
        )
        SELECT json_build_object(
            'renewed', v_renewed,
            'complete', everyone.complete,
            'nodes', (SELECT COALESCE(json_agg(n ORDER BY n.node_name), '[]'::json) FROM (
                SELECT id, node_name, region, is_active, last_heartbeat_at, lease_started_at,
                       lease_timeout_s, draining, stopped_at, incarnation, app_healthy,
                       last_verdict
                FROM server_registry AS r WHERE everyone.complete
                UNION ALL
                SELECT id, node_name, region, is_active, last_heartbeat_at, lease_started_at,
                       lease_timeout_s, draining, stopped_at, incarnation, app_healthy,
                       last_verdict
                FROM server_registry AS r WHERE NOT everyone.complete AND r.node_name = p_node
                UNION ALL
                SELECT id, node_name, region, is_active, last_heartbeat_at, lease_started_at,
                       lease_timeout_s, draining, stopped_at, incarnation, app_healthy,
                       last_verdict
                FROM server_registry AS r WHERE NOT everyone.complete AND r.node_name <> p_node
                    AND r.id = ANY(v_owners)
                UNION ALL
                SELECT id, node_name, region, is_active, last_heartbeat_at, lease_started_at,
                       lease_timeout_s, draining, stopped_at, incarnation, app_healthy,
                       last_verdict
                FROM server_registry AS r WHERE NOT everyone.complete AND everyone.owner AND r.is_active
                    AND r.node_name <> p_node AND r.id <> ALL(v_owners)
                    AND (r.stopped_at IS NOT NULL
                         OR r.last_heartbeat_at + r.lease_timeout_s * interval '1 second' < v_now)
                ) AS n),
            'services', (SELECT COALESCE(json_agg(s ORDER BY s.service_type), '[]'::json) FROM (
                SELECT service_type, service_registry_id, epoch, acquired_at, acquired_reason,
                       home_region, handover_to, handover_since, handover_until, handover_reason
                FROM service_status) AS s),
            'now', v_now)
        FROM everyone
    );
END
$$;

-- The previous release's call (eight arguments) still renews; it leaves the columns as they are.
CREATE OR REPLACE FUNCTION failover_heartbeat(
    p_node TEXT,
    p_incarnation UUID,
    p_healthy BOOLEAN,
    p_db_round_trip_ms REAL,
    p_broker_round_trip_ms REAL,
    p_heartbeat_cycle_ms REAL,
    p_everyone BOOLEAN,
    p_broker_server TEXT
) RETURNS JSON
LANGUAGE sql AS $$
    SELECT failover_heartbeat($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL);
$$;
