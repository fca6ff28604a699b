-- Revision 0014, frozen.
-- One spelling each of "this incarnation's lease holds" and "that incarnation is gone" (issue
-- 21): two functions, which the heartbeat, the epoch fence and the nodes' statements call,
-- instead of the rule written out in each. The heartbeat (ten arguments) and the fence are
-- replaced with bodies that call them and do what they did. Expand only: new functions, and
-- the same two functions' new bodies (same arguments, same results).
-- This incarnation's lease holds (at `p_at`, the database's time by default): its row is not
-- stopped and its last renewal is younger than its lease. The one spelling of the rule: the
-- heartbeat, the epoch fence, the services' tick, the name's hold and the takeover's judge
-- all call it.
CREATE FUNCTION failover_lease_holds(
    r server_registry,
    p_at TIMESTAMPTZ DEFAULT clock_timestamp()
) RETURNS BOOLEAN
LANGUAGE sql AS $$
    SELECT r.stopped_at IS NULL
        AND r.last_heartbeat_at + r.lease_timeout_s * interval '1 second' > p_at
$$;

-- That incarnation is gone, as the judging incarnation `p_judge` may conclude (the takeover
-- rule, invariants 3 and 4): the judge's own lease holds, and the other's lease ran out after
-- the judge's judging window opened (the outage rule: a judge whose own beats stopped gives
-- everyone a whole lease again). Until then the other's work is still its own, stopped or
-- not, whatever a promoted standby's clock or a lost renewal says. An incarnation whose row
-- was replaced (its node started again) is gone.
CREATE FUNCTION failover_incarnation_gone(p_incarnation UUID, p_judge UUID) RETURNS BOOLEAN
LANGUAGE sql AS $$
    SELECT EXISTS (
        SELECT 1 FROM server_registry AS judge
        WHERE judge.incarnation = p_judge AND failover_lease_holds(judge)
          AND NOT EXISTS (
            SELECT 1 FROM server_registry AS r
            WHERE r.incarnation = p_incarnation
              AND greatest(r.last_heartbeat_at, judge.lease_started_at)
                  + r.lease_timeout_s * interval '1 second' > clock_timestamp()))
$$;

CREATE OR REPLACE FUNCTION failover_heartbeat(
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
                OR NOT failover_lease_holds(server_registry, v_now)
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
                    WHERE o.id = ANY(v_owners)
                      AND NOT (o.is_active AND failover_lease_holds(o, v_now))
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
                    AND NOT failover_lease_holds(r, v_now)
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

CREATE OR REPLACE FUNCTION failover_fence(
    p_service TEXT,
    p_epoch BIGINT,
    p_node TEXT,
    p_incarnation UUID,
    p_owner_only BOOLEAN,
    p_starting BOOLEAN
) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_handover_since TIMESTAMPTZ;
    v_handover_to TEXT;
    v_owner TEXT;
    v_epoch BIGINT;
BEGIN
    SELECT s.handover_since, s.handover_to INTO v_handover_since, v_handover_to
    FROM service_status AS s JOIN server_registry AS r ON r.id = s.service_registry_id
    WHERE s.service_type = p_service AND s.epoch = p_epoch AND failover_lease_holds(r)
      AND (NOT p_owner_only OR (r.node_name = p_node AND r.incarnation = p_incarnation))
    FOR SHARE OF s;
    IF NOT FOUND THEN
        SELECT r.node_name, s.epoch INTO v_owner, v_epoch
        FROM service_status AS s LEFT JOIN server_registry AS r ON r.id = s.service_registry_id
        WHERE s.service_type = p_service;
        RAISE EXCEPTION USING ERRCODE = 'FOST1', MESSAGE = format(
            '%s is not the owner of %s at epoch %s with a fresh lease (owner %s, epoch %s)',
            p_node, p_service, p_epoch, COALESCE(v_owner, 'nobody'), v_epoch);
    END IF;
    IF p_starting AND v_handover_since IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'FOHO1', MESSAGE = format(
            '%s is handing over to %s: it starts nothing new', p_service,
            COALESCE(v_handover_to, 'nobody (a graceful stop)'));
    END IF;
    RETURN true;
END
$$;
