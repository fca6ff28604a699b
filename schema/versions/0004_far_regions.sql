-- Revision 0004, frozen.
-- What each node measured of its own distance to the stores, stored by its heartbeat.
ALTER TABLE server_registry
    ADD COLUMN db_round_trip_ms REAL,
    ADD COLUMN broker_round_trip_ms REAL,
    ADD COLUMN heartbeat_cycle_ms REAL;

-- Every node renews its row about once a second: leave room on each page so that renewals
-- are HOT updates (no index covers a column a heartbeat changes), and vacuum by absolute
-- thresholds, not by a fraction of a small, hot table.
ALTER TABLE server_registry SET (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 2000
);

-- The region a service is leaving (its last owner's): the region whose nodes may claim it
-- first when it was released, exactly as after a takeover.
ALTER TABLE service_status ADD COLUMN home_region VARCHAR(63);

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
        (service_type, from_node, to_node, epoch, reason, actor, detail, changed_at)
    VALUES (
        NEW.service_type,
        (SELECT node_name FROM server_registry WHERE id = OLD.service_registry_id),
        (SELECT node_name FROM server_registry WHERE id = NEW.service_registry_id),
        NEW.epoch, NEW.acquired_reason, NEW.acquired_by, NEW.acquired_detail,
        COALESCE(NEW.acquired_at, clock_timestamp())
    );
    RETURN NEW;
END
$$;

-- One heartbeat in one statement (one round trip): renew this incarnation's lease (only
-- while its application is healthy), store its measured latencies, and return what the
-- node decides on: the database time, the services and the nodes it must judge, as JSON.
-- The judging window (lease_started_at) starts again when the lease had lapsed, the node
-- was marked inactive, or its previous renewal is older than 1.5 heartbeat intervals: a
-- node whose own beats were interrupted (an outage, a pause, a slow far link) gives its
-- peers a whole lease again before it judges them.
CREATE FUNCTION failover_heartbeat(
    p_node TEXT,
    p_incarnation UUID,
    p_healthy BOOLEAN,
    p_db_round_trip_ms REAL,
    p_broker_round_trip_ms REAL,
    p_heartbeat_cycle_ms REAL,
    p_everyone BOOLEAN DEFAULT false
) RETURNS JSON
LANGUAGE plpgsql AS $$
DECLARE
    v_now TIMESTAMPTZ := clock_timestamp();
    v_renewed BOOLEAN;
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
        heartbeat_cycle_ms = COALESCE(p_heartbeat_cycle_ms, heartbeat_cycle_ms)
    WHERE node_name = p_node AND incarnation = p_incarnation AND stopped_at IS NULL;
    v_renewed := FOUND;
    -- One statement (one snapshot of the tables, one database time) for what is returned.
    -- The whole registry only when this node may have to choose among candidates: a service
    -- without a live-looking owner (to claim or take over), a draining node handing over, or
    -- a failback policy. Otherwise itself, the owners and the peers that may have expired:
    -- what `decide` judges, whatever the size of the cluster.
    RETURN (
        WITH everyone AS (
            SELECT p_everyone
                OR EXISTS (SELECT 1 FROM server_registry WHERE node_name = p_node AND draining)
                OR EXISTS (
                    SELECT 1 FROM service_status AS s
                    LEFT JOIN server_registry AS o ON o.id = s.service_registry_id
                    WHERE o.id IS NULL OR NOT o.is_active OR o.stopped_at IS NOT NULL
                       OR o.last_heartbeat_at + o.lease_timeout_s * interval '1 second' < v_now
                ) AS complete
        )
        SELECT json_build_object(
            'renewed', v_renewed,
            'complete', everyone.complete,
            'nodes', (SELECT COALESCE(json_agg(n ORDER BY n.node_name), '[]'::json) FROM (
                SELECT id, node_name, region, is_active, last_heartbeat_at, lease_started_at,
                       lease_timeout_s, draining, stopped_at, incarnation, app_healthy,
                       last_verdict
                FROM server_registry AS r
                WHERE everyone.complete
                   OR r.node_name = p_node
                   OR r.id IN (SELECT service_registry_id FROM service_status)
                   OR (r.is_active AND (r.stopped_at IS NOT NULL
                       OR r.last_heartbeat_at + r.lease_timeout_s * interval '1 second' < v_now))
                ) AS n),
            'services', (SELECT COALESCE(json_agg(s ORDER BY s.service_type), '[]'::json) FROM (
                SELECT service_type, service_registry_id, epoch, acquired_at, acquired_reason,
                       home_region
                FROM service_status) AS s),
            'now', v_now)
        FROM everyone
    );
END
$$;
