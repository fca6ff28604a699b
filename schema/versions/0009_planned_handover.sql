-- Revision 0009, frozen.
-- Planned handovers (issue 17): a move, a drain, a failback or a graceful stop first marks
-- the service as handing over (to whom, since when, until when), the owner starts nothing
-- new for it and lets what runs finish; the epoch moves only after that, or at the end of
-- the grace. The history records how long a handover waited and how many runs it cut.
-- Expand only: nodes of the previous release never name these columns, and their moves
-- still move at once.
ALTER TABLE service_status
    ADD COLUMN handover_to VARCHAR(63),
    ADD COLUMN handover_since TIMESTAMPTZ,
    ADD COLUMN handover_until TIMESTAMPTZ,
    ADD COLUMN handover_reason VARCHAR(32) CHECK (handover_reason IN ('manual', 'failback', 'release')),
    ADD COLUMN handover_actor VARCHAR(255),
    ADD COLUMN handover_detail TEXT,
    ADD COLUMN handover_cut INTEGER;

ALTER TABLE ownership_history
    ADD COLUMN handover_waited_s REAL,
    ADD COLUMN handover_cut INTEGER;

ALTER TABLE server_registry ADD COLUMN drain_grace_s REAL CHECK (drain_grace_s >= 0);

-- Every change of owner ends a handover and says, in its history row, how long it waited.
CREATE OR REPLACE FUNCTION service_status_record_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.service_registry_id IS NOT DISTINCT FROM OLD.service_registry_id THEN
        IF NEW.epoch <> OLD.epoch THEN
            RAISE EXCEPTION 'service %: epoch changed without a change of owner', OLD.service_type;
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.epoch <> OLD.epoch + 1 THEN
        RAISE EXCEPTION 'service %: a change of owner must raise the epoch by one (% -> %)',
            OLD.service_type, OLD.epoch, NEW.epoch;
    END IF;
    NEW.home_region := COALESCE(
        (SELECT region FROM server_registry WHERE id = OLD.service_registry_id),
        OLD.home_region
    );
    INSERT INTO ownership_history
        (service_type, from_node, to_node, epoch, reason, actor, detail, changed_at,
         handover_waited_s, handover_cut)
    VALUES (
        NEW.service_type,
        (SELECT node_name FROM server_registry WHERE id = OLD.service_registry_id),
        (SELECT node_name FROM server_registry WHERE id = NEW.service_registry_id),
        NEW.epoch, NEW.acquired_reason, NEW.acquired_by, NEW.acquired_detail,
        COALESCE(NEW.acquired_at, clock_timestamp()),
        extract(epoch FROM clock_timestamp() - OLD.handover_since),
        NEW.handover_cut
    );
    -- A handover ends with any change of owner, whoever made it.
    NEW.handover_to := NULL;
    NEW.handover_since := NULL;
    NEW.handover_until := NULL;
    NEW.handover_reason := NULL;
    NEW.handover_actor := NULL;
    NEW.handover_detail := NULL;
    NEW.handover_cut := NULL;
    RETURN NEW;
END
$$;

-- The heartbeat of revision 0005, which also returns each service's handover.
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
