-- The mirror's tables. Every row is written by the one mirror holding the
-- advisory lock, in one transaction per batch of revisions that also moves
-- mirror_state.revision (pgmirror/doc.go).

-- mirror_state is one row: the revision every other table is at.
CREATE TABLE mirror_state (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision   bigint NOT NULL,
    updated_at timestamptz NOT NULL,        -- when the mirror wrote it
    source_at  timestamptz                  -- the leader's clock at that revision
);
INSERT INTO mirror_state (id, revision, updated_at) VALUES (true, 0, now());

CREATE TABLE pods (
    id         text PRIMARY KEY,
    ordinal    integer NOT NULL,
    addr       text NOT NULL,
    state      text NOT NULL,               -- active | down | draining
    since      timestamptz NOT NULL,        -- when it entered state (leader clock)
    drain      boolean NOT NULL,
    guilds     integer NOT NULL DEFAULT 0,  -- guilds it owns
    revision   bigint NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE guild_assignments (
    guild_id        bigint PRIMARY KEY,
    owner           text NOT NULL,
    state           text NOT NULL,          -- active | migrating
    epoch           bigint NOT NULL,
    move_from       text,                   -- the move in flight, if any
    move_to         text,
    move_epoch      bigint,
    move_phase      text,
    move_started_at timestamptz,
    move_failover   boolean,
    revision        bigint NOT NULL,        -- the revision that last changed it
    updated_at      timestamptz NOT NULL    -- that revision's leader clock (or the resync's time)
);
CREATE INDEX guild_assignments_owner ON guild_assignments (owner);

CREATE TABLE shard_assignments (
    shard      integer PRIMARY KEY,
    holder     text NOT NULL,               -- '' when no pod is active
    epoch      bigint NOT NULL,
    revision   bigint NOT NULL,
    updated_at timestamptz NOT NULL
);

-- One row per change of the stream, keyed by (revision, seq): seq is the
-- event's position in its revision; a resync is one row at seq -1.
CREATE TABLE assignment_events (
    revision    bigint NOT NULL,
    seq         integer NOT NULL,
    at          timestamptz NOT NULL,       -- the leader's clock
    mirrored_at timestamptz NOT NULL,       -- when the mirror wrote it
    kind        text NOT NULL,
    cause       text NOT NULL,              -- the command that made the change
    guild_id    bigint,
    pod         text,
    shard       integer,
    from_pod    text,
    to_pod      text,
    epoch       bigint,
    phase       text,
    reason      text,
    failover    boolean NOT NULL DEFAULT false,
    duration_ms bigint,                     -- move_completed / move_aborted: since move_started
    detail      jsonb,
    PRIMARY KEY (revision, seq)
);
CREATE INDEX assignment_events_kind_at ON assignment_events (kind, at);
CREATE INDEX assignment_events_at ON assignment_events (at);

-- A pod's guild count at every revision that changed it.
CREATE TABLE pod_guild_counts (
    revision bigint NOT NULL,
    pod      text NOT NULL,
    at       timestamptz NOT NULL,
    guilds   integer NOT NULL,
    PRIMARY KEY (revision, pod)
);
CREATE INDEX pod_guild_counts_at ON pod_guild_counts (at);
