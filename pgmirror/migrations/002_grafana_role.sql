-- modbot_grafana: the read-only login Grafana's datasource uses
-- (deploy/grafana). Roles belong to the whole server, so another database's
-- mirror may have created it already. A mirror whose user may not create
-- roles warns and goes on: create the role yourself (docs/operations.md).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'modbot_grafana') THEN
        CREATE ROLE modbot_grafana LOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE WARNING 'pgmirror: cannot create role modbot_grafana (no CREATEROLE): create it and re-run, or grant SELECT yourself';
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'modbot_grafana') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO modbot_grafana', current_database());
        GRANT USAGE ON SCHEMA public TO modbot_grafana;
        GRANT SELECT ON mirror_state, pods, guild_assignments, shard_assignments,
            assignment_events, pod_guild_counts TO modbot_grafana;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO modbot_grafana;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE WARNING 'pgmirror: cannot grant SELECT to modbot_grafana: grant it yourself';
END $$;
