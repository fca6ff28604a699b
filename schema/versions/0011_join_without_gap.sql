-- Revision 0010, frozen.
-- Nodes join without a gap (issue 17): a node registers as joining, not live. It holds its
-- name (a second process under that name is refused) until `joining_until`, which the
-- starting process pushes forward while its Celery consumer starts, but it is no live node
-- or candidate to its peers and owns nothing. Its first heartbeat consumed through its
-- consumer clears `joining_until` and makes it live (is_active, and its judging window
-- starts then), so it never looks live before it can keep renewing.
-- Expand only: nodes of the previous release never name the column and still register live.
ALTER TABLE server_registry ADD COLUMN joining_until TIMESTAMPTZ;

-- The heartbeat of revision 0009; a healthy renewal also ends the node's join.
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
        broker_server = COALESCE(p_broker_server, broker_server)
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

-- A joining node's first renewal makes it live: that is its start (already recorded), not a
-- revival.
CREATE OR REPLACE FUNCTION server_registry_record_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_now TIMESTAMPTZ := clock_timestamp();
BEGIN
    IF TG_OP = 'INSERT' OR NEW.incarnation IS DISTINCT FROM OLD.incarnation THEN
        INSERT INTO node_event (node_name, region, event, at, detail)
        VALUES (NEW.node_name, NEW.region, 'started', v_now,
                'pid ' || COALESCE(NEW.pid::text, '?') || ' on ' || COALESCE(NEW.hostname, '?'));
        RETURN NULL;
    END IF;
    IF NEW.stopped_at IS NOT NULL AND OLD.stopped_at IS NULL THEN
        INSERT INTO node_event (node_name, region, event, at, detail)
        VALUES (NEW.node_name, NEW.region, 'stopped', NEW.stopped_at, NEW.last_verdict);
    ELSIF OLD.is_active AND NOT NEW.is_active THEN
        -- marked inactive by a peer: the node was dead from the end of its lease on
        INSERT INTO node_event (node_name, region, event, at, detail)
        VALUES (NEW.node_name, NEW.region, 'expired',
                LEAST(v_now, NEW.last_heartbeat_at + NEW.lease_timeout_s * interval '1 second'),
                'lease expired, marked inactive');
    ELSIF NEW.is_active AND NOT OLD.is_active AND NEW.stopped_at IS NULL
          AND OLD.joining_until IS NULL THEN
        INSERT INTO node_event (node_name, region, event, at, detail)
        VALUES (NEW.node_name, NEW.region, 'revived', v_now, 'beats again');
    END IF;
    IF NEW.draining IS DISTINCT FROM OLD.draining THEN
        INSERT INTO node_event (node_name, region, event, at, detail)
        VALUES (NEW.node_name, NEW.region,
                CASE WHEN NEW.draining THEN 'draining' ELSE 'undrained' END, v_now, NULL);
    END IF;
    RETURN NULL;
END
$$;
