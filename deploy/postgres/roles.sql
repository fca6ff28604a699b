-- celery-failover: its database and two roles, for a DBA to run once as a superuser.
--
--   psql -v ON_ERROR_STOP=1 -h db1 -U postgres -d postgres -f deploy/postgres/roles.sql
--
-- (add `-v db=NAME` for a database not named `failover`). Running it again changes nothing.
-- It sets no password: set them next, in psql (it prompts, and sends only a hash):
--
--   \password failover_owner
--   \password failover_node
--
-- or `ALTER ROLE failover_node PASSWORD '...'` from a script that reads it from a secret
-- store (never from a file under version control). Then migrate as the owner, and grant the
-- nodes their rights (deploy/postgres/grants.sql, after every `failover db upgrade`):
--
--   FAILOVER_ADMIN_DATABASE_URL=postgresql+psycopg://failover_owner:PW@db1:5432/failover \
--     failover db upgrade
--   psql -v ON_ERROR_STOP=1 "postgresql://failover_owner@db1:5432/failover" \
--     -f deploy/postgres/grants.sql
--
-- failover_owner owns the database and every object `failover db upgrade` creates; only
-- that command and grants.sql use it. failover_node is what every node, and the operators' commands
-- (status, move, drain, run-script, web, metrics), connect as: it owns nothing, and has
-- only the rights grants.sql gives it.

\if :{?db}
\else
\set db failover
\endif

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'failover_owner') THEN
        CREATE ROLE failover_owner;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'failover_node') THEN
        CREATE ROLE failover_node;
    END IF;
END
$$;

-- Plain login roles: no superuser, no roles or databases of their own, no replication, and
-- row-level security applies to them. (Re-stated, so that a re-run also repairs them.)
ALTER ROLE failover_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE failover_node LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

SELECT format('CREATE DATABASE %I OWNER failover_owner', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO failover_owner;

-- Only the two roles may connect. The nodes create temporary tables (a folder's listing,
-- dropped at the end of its transaction), so they keep TEMPORARY; nothing else.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO failover_node;

\connect :"db"

-- The schema: the owner creates in it; the nodes only look objects up in it. PostgreSQL 15
-- no longer lets PUBLIC create in `public`; older servers did, so take it back explicitly.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO failover_owner;
GRANT USAGE ON SCHEMA public TO failover_node;

-- A function is executable by PUBLIC when created, unless its owner's defaults say
-- otherwise: the owner's new functions are executable by nobody else until grants.sql
-- grants the nodes the few they call.
ALTER DEFAULT PRIVILEGES FOR ROLE failover_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
